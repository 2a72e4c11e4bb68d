from deliverer.cli.commands import main

raise SystemExit(main())
