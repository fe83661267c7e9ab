from snmp_watchdog.cli import main

raise SystemExit(main())
