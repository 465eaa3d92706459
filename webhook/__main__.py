from webhook.entry import main

raise SystemExit(main())
