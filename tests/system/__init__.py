"""System tests: real `deliverer` processes, the fault scenarios, the browser, kubectl and promtool, PgBouncer,
the example receivers in four languages, and the benchmark's smoke run."""
