# Stands for a real Kodosumi install on the flow's path: kodo's stand-in
# must come first, so importing this one is a failure.
raise ImportError("the installed kodosumi was imported instead of kodo's stand-in")
