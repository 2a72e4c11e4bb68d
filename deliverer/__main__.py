from deliverer.cli import main

raise SystemExit(main())
