from zigma.cli import main

raise SystemExit(main())
