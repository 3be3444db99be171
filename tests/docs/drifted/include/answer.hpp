// The code of a sample in tests/docs/drifted/README.md, since changed: check_samples.py must say so.
inline int answer() { return 42; }
