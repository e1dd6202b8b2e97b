"""One execution of a Kodosumi flow:

    python3 -m kodo.kodosumi pkg.mod:fn              # an entry point
    python3 -m kodo.kodosumi pkg.mod:app --path /    # an @app.enter route
"""
import argparse
import sys

from . import run

parser = argparse.ArgumentParser(prog="python3 -m kodo.kodosumi")
parser.add_argument("target", help="pkg.mod:fn, or pkg.mod:app with --path")
parser.add_argument("--path", help="the @app.enter route of the app")
args = parser.parse_args()
sys.exit(run(args.target, args.path))
