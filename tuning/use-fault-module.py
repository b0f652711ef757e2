#!/usr/bin/env python3
"""Points a `signerd init --dev` set-up at the fault-injecting PKCS#11 module (pkcs11-fault/).

    tuning/use-fault-module.py DIR MODULE WORKERS [MIN_INFLIGHT]

Rewrites DIR/signerd.toml: the provider loads MODULE (which wraps the SoftHSM2 module the config
named, via SIGNERD_FAULT_TARGET) with DIR/fault.toml as its rules, and runs WORKERS sessions per
partition (with MIN_INFLIGHT as the floor of the adaptive in-flight limit, when given). Used by
tuning/drill.sh and tuning/batch.sh.
"""
import re
import sys

d, module, workers = sys.argv[1:4]
extra = f"\nmin_inflight = {sys.argv[4]}" if len(sys.argv) > 4 else ""
p = f"{d}/signerd.toml"
s = open(p).read()
softhsm = re.search(r'^module = "(.*)"$', s, re.M).group(1)
s = s.replace(f'module = "{softhsm}"', f'module = "{module}"\nworkers_per_partition = {workers}{extra}', 1)
s = re.sub(
    r'^env = \{ SOFTHSM2_CONF = "(.*)" \}$',
    lambda m: f'env = {{ SOFTHSM2_CONF = "{m.group(1)}", SIGNERD_FAULT_CONFIG = "{d}/fault.toml", '
    f'SIGNERD_FAULT_TARGET = "{softhsm}" }}',
    s,
    flags=re.M,
)
open(p, "w").write(s)
