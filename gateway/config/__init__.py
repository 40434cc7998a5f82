"""The config file, YAML to frozen `Settings`: read once at start-up (and on a reload), never
on the request path. Every problem is reported at once, each as `file:line key.path: message`.

Public face: `load(path)`, `loads(text)`; the settings types live in `gateway.config.settings`,
the one part of this package the request path imports.
"""

from gateway.config.document import load, loads

__all__ = ["load", "loads"]
