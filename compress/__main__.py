"""python -m compress {info, demo, report}."""
import argparse
import sys


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m compress")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("info", help="versions, what was built, devices, backends of each op")
    sub.add_parser("demo", help="the main job: convert and time real models (see `demo --help`)", add_help=False)
    rp = sub.add_parser("report", help="results JSON -> Markdown table + PNG plot")
    rp.add_argument("files", nargs="+")
    rp.add_argument("--out", help="output directory (default: beside each file)")
    a, rest = p.parse_known_args(argv)
    if a.cmd == "demo":
        from compress import demo
        return demo.main(rest)
    if rest:
        p.error(f"unrecognized arguments: {' '.join(rest)}")
    if a.cmd == "info":
        from compress import info
        print(info.render(info.collect()))
    elif a.cmd == "report":
        from compress.benchmark import report
        for path in report(a.files, a.out):
            print(path)


if __name__ == "__main__":
    main()
