raise RuntimeError("this module fails at import")


def fn(inputs):
    return None
