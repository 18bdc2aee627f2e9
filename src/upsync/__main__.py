from upsync.cli import main

raise SystemExit(main())
