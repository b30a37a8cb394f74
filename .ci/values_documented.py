"""Fails when a key of the chart's values.yaml is missing from the values table of its README.

Usage: values_documented.py VALUES.yaml README.md
A row may document siblings together: `a.b.for` / `.severity` covers a.b.for and a.b.severity.
Values whose content is a Kubernetes object (securityContext, resources, probes, selectors)
are documented as a whole.
"""

import sys

import yaml

WHOLE = {
    "podSecurityContext", "securityContext", "resources", "livenessProbe", "readinessProbe",
    "networkPolicy.dns.namespaceSelector", "networkPolicy.dns.podSelector",
}


def leaves(values, prefix=""):
    for key, value in values.items():
        path = prefix + key
        if isinstance(value, dict) and value and path not in WHOLE:
            yield from leaves(value, path + ".")
        else:
            yield path


def main():
    values = yaml.safe_load(open(sys.argv[1]))
    readme = open(sys.argv[2]).read()
    missing = []
    for path in leaves(values):
        parent, _, leaf = path.rpartition(".")
        if f"`{path}`" in readme or (parent and f"`{parent}." in readme and f"`.{leaf}`" in readme):
            continue
        missing.append(path)
    for path in missing:
        print(f"  FAIL values.yaml key {path} is not in the README's values table")
    print(f"  {sum(1 for _ in leaves(values))} values, {len(missing)} undocumented")
    sys.exit(1 if missing else 0)


if __name__ == "__main__":
    main()
