# Stands for a real Ray install: kodo's ray stand-in comes last, so this wins.
INSTALLED = True


def remote(fn):
    class Remote:
        @staticmethod
        def remote(*args):
            return ("installed-ray", fn(*args))
    return Remote


def get(ref):
    return ref[1] + " (via the installed ray)"
