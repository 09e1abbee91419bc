from labelfree.cli import main

raise SystemExit(main())
