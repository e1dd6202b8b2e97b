"""kodo's stand-in for `kodosumi` (when Kodosumi is not installed): what a
Kodosumi flow module imports, backed by `kodo.kodosumi`."""

__version__ = "1.1.0+kodo"
__kodo_standin__ = True
