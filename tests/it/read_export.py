"""Read a kpiwatch Parquet export back and check it against docs/EXPORT.md.

Usage: read_export.py EXPORT.md FILE.parquet ROWS DIM... ; prints "ok N" or exits non-zero
naming what differs. Run by tests/it/export.rs with the venv's Python (pyarrow).
"""
import re
import sys

import pyarrow as pa
import pyarrow.parquet as pq

doc, path, rows, dims = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]

documented = []
for line in open(doc, encoding="utf-8"):
    m = re.match(r"^\| `([a-z_<>]+)` \| (\w+) \| (yes|no) \|", line)
    if m:
        documented.append(m.groups())
expected = []
for name, typ, nulls in documented:
    if name == "dim_<name>":
        expected += [(f"dim_{d}", typ, nulls) for d in sorted(dims)]
    else:
        expected.append((name, typ, nulls))

table = pq.read_table(path)
schema = table.schema
errors = []
if [f.name for f in schema] != [e[0] for e in expected]:
    errors.append(f"columns {[f.name for f in schema]} != documented {[e[0] for e in expected]}")
checks = {
    "string": lambda t: pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t),
    "int64": pa.types.is_int64,
    "float64": pa.types.is_float64,
    "bool": pa.types.is_boolean,
}
for name, typ, nulls in expected:
    if name not in schema.names:
        continue
    field = schema.field(name)
    if not checks[typ](field.type):
        errors.append(f"{name}: type {field.type} is not the documented {typ}")
    if nulls == "no" and table.column(name).null_count:
        errors.append(f"{name}: {table.column(name).null_count} nulls in a column documented without")
if table.num_rows != rows:
    errors.append(f"{table.num_rows} rows, expected {rows}")
if errors:
    print("\n".join(errors))
    sys.exit(1)
print("ok", table.num_rows)
