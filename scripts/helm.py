"""A small helm-like command line over helm-python-sdk (Helm's Go SDK): see scripts/helm."""
import argparse
import json
import sys

import helm_python as helm
import helm_python.config as helm_config


def _client_side_apply(opts):
    """Install and upgrade with client-side apply (Helm 3's way) rather than Helm 4's
    server-side apply: Kubernetes 1.20's aggregator panics on a server-side apply of an
    APIService ("FieldManager must be installed to run apply"), which the chart has."""
    def wrapped(**pairs):
        raw = opts(**pairs)
        if "chart_version" not in pairs:  # not an install or upgrade
            return raw
        present = json.loads(raw) if raw else {}
        # install takes a bool, upgrade Helm 4's "true"/"false"/"auto".
        present["server_side_apply"] = "false" if "max_history" in pairs else False
        return json.dumps(present)
    return wrapped


helm_config._opts = _client_side_apply(helm_config._opts)


def parse_set(pairs):
    """--set a.b=c, as helm parses it for the cases the chart uses (bool, int, string)."""
    values = {}
    for pair in pairs or []:
        key, _, raw = pair.partition("=")
        value = {"true": True, "false": False}.get(raw, raw)
        if isinstance(value, str) and value.isdigit():
            value = int(value)
        node = values
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return values


def main():
    ap = argparse.ArgumentParser(prog="scripts/helm")
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("install", "upgrade", "template"):
        p = sub.add_parser(name)
        p.add_argument("release")
        p.add_argument("chart")
        p.add_argument("-n", "--namespace", default="default")
        p.add_argument("--set", action="append")
        p.add_argument("--wait", action="store_true")
        p.add_argument("--timeout", type=int, default=300)  # Helm CLI's default, 5m
        p.add_argument("--create-namespace", action="store_true")
        if name == "upgrade":
            # Helm's own: without --reuse-values an upgrade starts from the chart's defaults
            # (plus this command's --set), so values set at install are silently reset.
            p.add_argument("--reuse-values", action="store_true")
            p.add_argument("--reset-values", action="store_true")
    p = sub.add_parser("uninstall")
    p.add_argument("release")
    p.add_argument("-n", "--namespace", default="default")
    p.add_argument("--wait", action="store_true")
    p = sub.add_parser("lint")
    p.add_argument("chart")
    p.add_argument("--set", action="append")
    args = ap.parse_args()

    if args.cmd == "lint":
        report = helm.lint(args.chart, parse_set(args.set), strict=True)
        for m in report.get("messages", []):
            print(f"[{m.get('severity')}] {m.get('path')}: {m.get('error')}")
        errors = report.get("errors") or [
            m for m in report.get("messages", []) if m.get("severity", 0) >= 2
        ]
        print(f"{report.get('total_charts_linted', 0)} chart(s) linted, {len(errors)} failed")
        return 1 if errors else 0

    cfg = helm.Config(namespace=args.namespace)
    wait = "watcher" if getattr(args, "wait", False) else None
    if args.cmd == "uninstall":
        cfg.uninstall(args.release, wait=wait, timeout=120)
        print(f'release "{args.release}" uninstalled')
        return 0
    values = parse_set(args.set)
    if args.cmd == "template":
        rel = cfg.install(args.chart, args.release, values, namespace=args.namespace,
                          dry_run="client")
        print(rel.get("manifest", ""))
        return 0
    if args.cmd == "install":
        rel = cfg.install(args.chart, args.release, values, namespace=args.namespace,
                          wait=wait, timeout=args.timeout,
                          create_namespace=args.create_namespace)
    else:
        if args.reuse_values and args.reset_values:
            print("scripts/helm: --reuse-values and --reset-values contradict each other; "
                  "pass one", file=sys.stderr)
            return 2
        rel = cfg.upgrade(args.chart, args.release, values, namespace=args.namespace,
                          wait=wait, timeout=args.timeout, reuse_values=args.reuse_values,
                          reset_values=args.reset_values)
    print(f'release "{rel.get("name")}" revision {rel.get("revision")}: {rel.get("status")}'
          f' (namespace {rel.get("namespace")})')
    if rel.get("notes"):
        print(rel["notes"].rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
