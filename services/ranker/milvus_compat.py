"""What differs between the Milvus engines the vector store runs on, named in one place.

seqrec runs unchanged on Milvus Lite (`milvus-lite server`, 3.x) and on Milvus servers from 2.3 on
(standalone or a cluster). The differences that matter to it:

* Nullable scalar fields exist from Milvus 2.5 only. The store never uses them: a missing metadata value
  is a placeholder plus a presence flag on every engine (`filters.presence_name`), so filter semantics
  cannot differ.
* Scalar indexes: Milvus Lite and servers from 2.4 on index every scalar type with INVERTED; a 2.3 server
  refuses INVERTED and takes Trie for VARCHAR and STL_SORT for numbers, and has no index for BOOL (a filter
  on a BOOL field is then a scan, which is still exact).

The engine is told apart by `get_server_version()`: Milvus Lite answers `milvus_lite-<version>`, a server
`v<major>.<minor>.<patch>[-suffix]`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_SERVER_VERSION = re.compile(r"^v?(\d+)\.(\d+)")
_LEGACY_SCALAR_INDEX = {"string": "Trie", "int64": "STL_SORT", "double": "STL_SORT"}  # Milvus 2.3


@dataclass(frozen=True)
class MilvusEngine:
    version: str  # what the engine reported
    lite: bool
    major: int
    minor: int

    @classmethod
    def from_version(cls, version: str) -> MilvusEngine:
        """The engine behind a `get_server_version()` answer; an unparsable one is taken as a current server."""
        text = str(version).strip()
        if text.startswith("milvus_lite"):
            return cls(text, True, 0, 0)
        match = _SERVER_VERSION.match(text)
        major, minor = (int(match.group(1)), int(match.group(2))) if match else (99, 0)
        return cls(text, False, major, minor)

    @property
    def inverted_index(self) -> bool:
        return self.lite or (self.major, self.minor) >= (2, 4)

    def scalar_index(self, kind: str) -> str | None:
        """The index type for a metadata field of column type `kind`; None: leave it unindexed."""
        if self.inverted_index:
            return "INVERTED"
        return _LEGACY_SCALAR_INDEX.get(kind)
