import pytest

from recalign.data import DataError
from recalign.data.formats import PrepareOptions, prepare
from recalign.data.sequences import SplitProtocol

LOOSE = PrepareOptions(protocol=SplitProtocol("loo", min_user_interactions=1, min_item_interactions=1))


def write_ml(folder, ratings):
    folder.mkdir(parents=True)
    (folder / "movies.dat").write_bytes("1::Amélie (2001)::Comedy|Romance\n2::Heat (1995)::Action\n"
                                        "3::Alien (1979)::Horror|Sci-Fi\n".encode("latin-1"))
    (folder / "ratings.dat").write_text("".join(f"{u}::{m}::5::{t}\n" for u, m, t in ratings))
    return folder


def test_movielens_layout_with_latin1_titles_and_timestamp_ties(tmp_path):
    write_ml(tmp_path / "ml-1m", [(1, 2, 100), (1, 1, 100), (1, 3, 200), (2, 3, 50), (2, 1, 60)])
    dataset, repairs = prepare("movielens", tmp_path, LOOSE)  # the folder holding ml-1m/ works too
    assert dataset.titles == ["Amélie (2001)", "Heat (1995)", "Alien (1979)"]
    assert dataset.items.column("category").to_pylist()[0] == "Comedy|Romance"
    test = dataset.split("test")
    # equal timestamps keep file order: user 1 saw Heat, then Amélie, then Alien
    assert test.history.iloc[0].tolist() == [1, 0] and test.target.tolist() == [2, 0]
    assert not repairs


def test_malformed_lines_are_counted_and_unknown_movies_refused(tmp_path):
    folder = write_ml(tmp_path / "a", [(1, 1, 1), (1, 2, 2), (1, 3, 3)])
    with open(folder / "ratings.dat", "a") as handle:
        handle.write("1::2::5\n")
    dataset, repairs = prepare("movielens", folder, LOOSE)
    assert repairs.to_dict()["malformed_line"] == {"count": 1, "what": repairs.to_dict()["malformed_line"]["what"],
                                                   "first": ["ratings.dat:4"]}
    with open(folder / "ratings.dat", "a") as handle:
        handle.write("1::99::5::4\n")
    with pytest.raises(DataError, match=r"ratings.dat, row 5, field 'movie_id'"):
        prepare("movielens", folder, LOOSE)
    with pytest.raises(DataError, match="movies.dat.*file not found|file not found"):
        prepare("movielens", tmp_path, LOOSE)
