from radlads.cli import main

raise SystemExit(main())
