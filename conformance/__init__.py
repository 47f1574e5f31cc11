"""qatmig_conformance: the conformance suite, runnable against any implementation.

    pytest --pyargs qatmig_conformance -p qatmig --qatmig-impl=<spec>

``<spec>`` is ``reference`` (default), an entry-point name of ``qatmig.implementations``,
``package.module:factory`` or ``qemu:/path/to/qemu-system-x86_64``. Tests that need a
capability the implementation does not declare skip as ``UNIMPLEMENTED``.
"""

SUITE_VERSION = "0.1"
