"""Load the configuration file (SPEC §4) into the frozen objects of ``model``.

Three passes, in the manner of blackbox_exporter's ``config.go``:

1. YAML to plain data, remembering the line of every key (``yaml``). A
   syntax error stops here; duplicate keys are problems.
2. Shape (``schema``): every section, receiver and service is checked
   by its pydantic model: unknown keys, types, ranges, host names. A receiver
   or service with a shape problem goes on to pass 3 without the values that
   have problems, so its other mistakes are found too; only a problem in a key
   the rules depend on (``version``, ``check``, ...) leaves it out
   (``problems``).
3. Rules across keys (``receivers``, ``services``, ``load`` for the file and
   ``watchdog:``): duplicate names, receivers that do not exist, keys that
   exclude each other or do not apply to the check kind, SNMP security rules;
   regexes are compiled, files are read, ``${VAR}`` secrets are resolved
   (``resources``).

Every problem of the file is collected; they are raised together as one
:class:`~snmp_watchdog.exceptions.ConfigError`, sorted by line, each written
``FILE:LINE: path.to[2].key: what is wrong`` (``problems``). A secret's value
never appears in a message.

Values are merged: a service's own value, else the ``defaults:`` value, else
the built-in default of ``model``. Relative paths are relative to the
directory of the configuration file. Host names are not resolved here.
"""

from snmp_watchdog.config.load import DEFAULT_CONFIG_PATH, default_config_path, load_config
from snmp_watchdog.config.problems import format_problems

__all__ = ["DEFAULT_CONFIG_PATH", "default_config_path", "format_problems", "load_config"]
