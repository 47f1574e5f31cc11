"""qatmig_conformance: the conformance suite, runnable against any implementation."""
