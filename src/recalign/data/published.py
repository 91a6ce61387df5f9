"""The published splits recalign fetches by name, each file pinned to a commit of its official repository and to a
SHA-256.

The files are the ones the papers' repositories ship (none is stored in Git LFS): TCA4Rec's sampled amazon18 splits
(github.com/critical88/TCA4Rec, ``data/<Category>/``), MiniOneRec's SID-indexed Amazon splits
(github.com/AkaliKong/MiniOneRec, ``data/Amazon/``) and the TS-Rec teacher's token keywords and descriptions
(github.com/jiaweif3ng/TS-Rec-Review, ``data/Amazon/semantics/``). Each is fetched from
``https://raw.githubusercontent.com/<repo>/<commit>/<path>``, so the bytes cannot change under a pinned name; the
SHA-256 and size of every file were computed from the Git blob at that commit, and agree with the copies the
benchmarks of this repository use wherever such a copy exists. The files are renamed on arrival to the names the
``amazon18`` and ``minionerec`` formats read (``valid.csv`` for ``valid/<Category>_5_2016-10-2018-11.csv``).

None of the repositories publishes the full training file behind its samples (see the dataset notes).
"""

from __future__ import annotations

from dataclasses import dataclass

RAW_GITHUB = "https://raw.githubusercontent.com"
TCA4REC = ("critical88/TCA4Rec", "baeca9e6ddd497c4df61283a60d4b56dbedc1b2a")  # 2026-02-18; data unchanged since init
MINIONEREC = ("AkaliKong/MiniOneRec", "81b4ba9811cfb152cf161f1c486fe516510d081e")  # 2025-11-26
TSREC = ("jiaweif3ng/TS-Rec-Review", "e2b938db575161666fea7a12ca691383f9010685")  # 2026-08-09


@dataclass(frozen=True)
class PinnedFile:
    path: str  # in the repository at the commit
    local: str  # the file's name in the dataset's folder
    size: int
    sha256: str


@dataclass(frozen=True)
class PublishedDataset:
    """``files`` of ``repo`` at ``commit``; ``format`` is the ``recalign data prepare`` format of the folder they
    make, None for a file that is not a dataset (``target`` then names the file a recipe setting points at)."""

    repo: str
    commit: str
    about: str
    format: str | None
    files: tuple[PinnedFile, ...]
    target: str | None = None

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


def _tca4rec(category: str, sizes_and_hashes: tuple[tuple[int, str], ...]) -> PublishedDataset:
    names = ("item.csv", "train_10000.csv", "valid_5000.csv", "test_5000.csv", "data_stat.json")
    return PublishedDataset(*TCA4REC, f"TCA4Rec's amazon18 {category} splits (10,000 / 5,000 / 5,000 sampled rows, "
                            "10-item histories; no full train.csv is published)", "amazon18",
                            tuple(PinnedFile(f"data/{category}/{name}", name, size, sha256)
                                  for name, (size, sha256) in zip(names, sizes_and_hashes, strict=True)))


def _minionerec(category: str, sizes_and_hashes: tuple[tuple[int, str], ...]) -> PublishedDataset:
    stem = f"{category}_5_2016-10-2018-11"
    files = ((f"index/{category}.index.json", f"{category}.index.json"),
             (f"index/{category}.item.json", f"{category}.item.json"), (f"info/{stem}.txt", "info.txt"),
             (f"valid/{stem}.csv", "valid.csv"), (f"test/{stem}.csv", "test.csv"))
    return PublishedDataset(*MINIONEREC, f"MiniOneRec's {category} (SIDs, items, valid and test splits; the train "
                            "split is not published)", "minionerec",
                            tuple(PinnedFile(f"data/Amazon/{path}", local, size, sha256)
                                  for (path, local), (size, sha256) in zip(files, sizes_and_hashes, strict=True)))


DATASETS: dict[str, PublishedDataset] = {
    "tca4rec:Toys_and_Games": _tca4rec("Toys_and_Games", (
        (1831765, "a0c8b10ed911ec8f49e52f246c451fea388f7cbf43ceccf29e762ee992fae724"),
        (1834467, "11e939091f271b9060d76ddd3b9f631351761fdf49eae6207f777f2c46034fbf"),
        (924119, "1b1078495ccf76c8bc415312eac0ca484c247b2cc08bd30f2ce955049c317809"),
        (923493, "50ef532cb4792f167f847c86ff3501a3b050feab2fa4d9e8af177d0dc13b8793"),
        (44, "9af480b1d69c1850bf7805723f7d7408bbe93f40823be515665c8d1e87f8a666"))),
    "tca4rec:Office_Products": _tca4rec("Office_Products", (
        (811292, "546272d5bc31d0e217870b5e7428cf990001a1a9ef9153fc725ed6c1d69832f2"),
        (1765862, "9f2ad77b28884390ab8a6e9949c07e4aaa1cc21c9cc0123370ff7a562982e5cc"),
        (885242, "83ff0d9dd2b81b1634d769cb2db5d99a2086db570747384d73e241b1c158a8ea"),
        (885801, "81f9199d5ed7cf381fc6b75e18e3c872972f28beb51380655d91d178df8d9243"),
        (43, "5b3b03b51fde410806e6882ef2fa4750228db70e28772da447dcc18bd434cd9b"))),
    "tca4rec:Sports_and_Outdoors": _tca4rec("Sports_and_Outdoors", (
        (3059537, "b1d678e9bc842cdb777bab9d4fc32c1097dd46d97971a336c2a3df7e224873cf"),
        (1828372, "1b2857bbcefb6744bcf948eae86b3022fb0fb4486c0aff3b19105d98cd83705e"),
        (922496, "7a5ed84e09d723f43dc90a0c905c1b3a39e112cffb29d1c8a3fcbf2e9ec463b9"),
        (924253, "75f1d99f6c6fbef1abfa8c4eef0c5284536895bc31b845feaf6f416e0dae03f1"),
        (44, "03eace1f19b3b8f9b677f06da4f69eebf935c0b9017168b7f8fc5282654256b8"))),
    "minionerec:Industrial_and_Scientific": _minionerec("Industrial_and_Scientific", (
        (152189, "53f1aefbe8b8aa774326c122606c6525300c5a325e7b78817739d465aeb335f8"),
        (3008778, "937600c7a03652f55864a1d12d6e9fe8ca3e24ecc4e255a88216b25c5f949496"),
        (374118, "bdc51fd9636e361db095c84de4e2650b3dd9606812c92e7a01f3b77c5c1a84f7"),
        (2915875, "12bbb02bced0bd754a8b4e0f9ca4086416e30d12b0b73a2c95e7b195dd67385a"),
        (3105687, "973dd1db4fd549f3f2b40a0f039dbae157ebb92c716197cc246401e4e82c3a46"))),
    "minionerec:Office_Products": _minionerec("Office_Products", (
        (142839, "f599d2b858beb5a2f660d6253896746c25a65f3a7d0c2f3ae6fd4ec2091eebc8"),
        (2570582, "398cb2bb7868bedf2ed8ed6b24d25e172f21b7022554d1f8ea52200478494c1c"),
        (361392, "7e8bae0a051a377713364b9e669590f86feb869fc269157c64b2189c0f4bcfa4"),
        (3038060, "a7d8f049ae425f413def22687cebcd172c65833633ff76dd3d90a83bca98234f"),
        (3310265, "c1967034e197a7837a8962f2556efaabc12eb5bb84e1fdc79cd0accbce71add5"))),
    "tsrec:Industrial_and_Scientific": PublishedDataset(
        *TSREC, "TS-Rec's teacher keywords and descriptions of the 560 SID tokens of "
        "minionerec:Industrial_and_Scientific (for llm.semantics)", None,
        (PinnedFile("data/Amazon/semantics/Industrial_and_Scientific.description_keywords.json",
                    "description_keywords.json", 634262,
                    "0085864e4b66834601a7fd674393c505cb01243ce046c1f94a1323ae9781ca27"),),
        target="description_keywords.json"),
}
