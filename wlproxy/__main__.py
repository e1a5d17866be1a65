from wlproxy.cli import main

raise SystemExit(main())
