"""The Flickr8k layouts people hold: the original release (Flickr8k.token.txt + split lists) and
Kaggle's captions.txt CSV; their readers, errors, deterministic CSV split, sources and CLI flags.

Text fixtures live in tests/data/flickr/ (the same 8 images and captions in both layouts); the
images are generated per test in a tmp folder.
"""

import hashlib
import logging
import re
import shutil
from pathlib import Path

import pytest
from PIL import Image

import cli
import evaluate
from captioner import sources
from captioner.datasets import (
    DatasetError,
    ImageRecord,
    flickr_image_id,
    read_captions_csv,
    read_flickr_token_file,
)

FIXTURES = Path(__file__).parent / "data" / "flickr"
TOKENS = FIXTURES / "Flickr8k.token.txt"
CSV = FIXTURES / "captions.txt"
LISTS = {"train": FIXTURES / "Flickr_8k.trainImages.txt", "val": FIXTURES / "Flickr_8k.devImages.txt",
         "test": FIXTURES / "Flickr_8k.testImages.txt"}
NAMES = sorted({line.split("#")[0] for line in TOKENS.read_text().splitlines()})
UNLISTED = "1012212859_01547e3f17.jpg"  # in the token file, in no split list


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "Flicker8k_Dataset"
    folder.mkdir()
    for name in NAMES:
        Image.new("RGB", (4, 3), (10, 20, 30)).save(folder / name, "JPEG")
    return folder


def _copy(src: Path, dst: Path, transform=None) -> Path:
    text = src.read_text()
    dst.write_text(transform(text) if transform else text)
    return dst


def _lines_reversed(text: str) -> str:
    return "\n".join(reversed(text.splitlines())) + "\n"


# --- the original release ----------------------------------------------------------


def test_token_file_records(images, caplog):
    with caplog.at_level(logging.INFO, logger="captioner.datasets"):
        out = read_flickr_token_file(TOKENS, images, LISTS)
    assert list(out) == ["train", "val", "test"]
    assert [len(out[s]) for s in out] == [5, 1, 1]
    assert out["val"] == [ImageRecord(
        flickr_image_id("1007320043_627395c3d8.jpg"), str(images / "1007320043_627395c3d8.jpg"), "val",
        ("A child playing on a rope net .", "A little girl climbing on red roping ."))]
    by_name = {Path(r.path).name: r for recs in out.values() for r in recs}
    assert set(by_name) == set(NAMES) - {UNLISTED}
    assert by_name["1007129816_e794419615.jpg"].captions == (  # file order, commas and quotes kept
        "A man in an orange hat starring at something .", "A man wears an orange hat and glasses .",
        'A man with a sign reading "no parking" .')
    for recs in out.values():
        assert [r.image_id for r in recs] == sorted(r.image_id for r in recs)
    assert "1 of 8 images with captions are in no split list; ignored" in caplog.text


def test_image_id_rule():
    name = "1000268201_693b08cb0e.jpg"
    assert flickr_image_id(name) == int(hashlib.sha1(name.encode()).hexdigest()[:12], 16)
    assert 0 <= flickr_image_id(name) < 2**48
    assert len({flickr_image_id(n) for n in NAMES}) == len(NAMES)


def test_token_file_ids_stable_under_reordering(images, tmp_path):
    reordered = {s: _copy(p, tmp_path / p.name, _lines_reversed) for s, p in LISTS.items()}
    tokens = _copy(TOKENS, tmp_path / "tokens.txt", _lines_reversed)
    out = read_flickr_token_file(tokens, images, reordered)
    expected = read_flickr_token_file(TOKENS, images, LISTS)
    # Captions of one image keep their file order, which the reversal changed; all else is equal.
    assert {s: [(r.image_id, r.path, set(r.captions)) for r in recs] for s, recs in out.items()} == \
           {s: [(r.image_id, r.path, set(r.captions)) for r in recs] for s, recs in expected.items()}


def test_token_file_split_names_come_from_the_mapping(images):
    out = read_flickr_token_file(TOKENS, images, {"dev": LISTS["val"]})
    assert list(out) == ["dev"] and out["dev"][0].split == "dev"


def test_token_file_tolerates_bom_crlf_and_blank_lines(images, tmp_path):
    raw = TOKENS.read_text().replace("\n", "\r\n")
    tokens = tmp_path / "tokens.txt"
    tokens.write_bytes(b"\xef\xbb\xbf" + ("\r\n" + raw + "\r\n\r\n").encode())
    assert read_flickr_token_file(tokens, images, LISTS) == read_flickr_token_file(TOKENS, images, LISTS)


@pytest.mark.parametrize("line, match", [
    ("1000268201_693b08cb0e.jpg#0 A caption with spaces, no tab .", r"line 3: no tab; expected NAME#N<TAB>caption"),
    ("1000268201_693b08cb0e.jpg\tA caption .", r"line 3: '1000268201_693b08cb0e.jpg' is not NAME#N"),
    ("1000268201_693b08cb0e.jpg#x\tA caption .", r"line 3: '1000268201_693b08cb0e.jpg#x' is not NAME#N"),
    ("#0\tA caption .", r"line 3: '#0' is not NAME#N"),
    ("1000268201_693b08cb0e.jpg#2\t   ", r"line 3: empty caption for 1000268201_693b08cb0e.jpg#2"),
])
def test_token_file_line_errors(images, tmp_path, line, match):
    lines = TOKENS.read_text().splitlines()
    tokens = tmp_path / "Flickr8k.token.txt"
    tokens.write_text("\n".join(lines[:2] + [line] + lines[2:]) + "\n")
    with pytest.raises(DatasetError, match=re.escape(str(tokens)) + ": " + match):
        read_flickr_token_file(tokens, images, LISTS)


def test_split_list_naming_an_image_without_captions(images, tmp_path):
    val = tmp_path / "Flickr_8k.devImages.txt"
    val.write_text("1007320043_627395c3d8.jpg\n\n999_nope.jpg\n")
    with pytest.raises(DatasetError, match=re.escape(f"{val}: line 3: image '999_nope.jpg' (split val) has no "
                                                     f"captions in {TOKENS}")):
        read_flickr_token_file(TOKENS, images, dict(LISTS, val=val))


def test_split_list_overlap_is_an_error_and_repeats_a_warning(images, tmp_path, caplog):
    val = tmp_path / "val.txt"
    val.write_text("1007320043_627395c3d8.jpg\n1000268201_693b08cb0e.jpg\n")
    with pytest.raises(DatasetError, match=re.escape(
            f"{val}: line 2: image '1000268201_693b08cb0e.jpg' is listed in split val and in split train "
            f"({LISTS['train']} line 1)")):
        read_flickr_token_file(TOKENS, images, dict(LISTS, val=val))
    val.write_text("1007320043_627395c3d8.jpg\n1007320043_627395c3d8.jpg\n")
    with caplog.at_level(logging.WARNING, logger="captioner.datasets"):
        out = read_flickr_token_file(TOKENS, images, dict(LISTS, val=val))
    assert len(out["val"]) == 1
    assert "line 2: image '1007320043_627395c3d8.jpg' listed again (first on line 1); ignored" in caplog.text


def test_token_file_file_errors(images, tmp_path):
    with pytest.raises(DatasetError, match=r"nope\.txt: file not found \(check the token_file argument\)"):
        read_flickr_token_file(tmp_path / "nope.txt", images, LISTS)
    with pytest.raises(DatasetError, match=r"test\.txt: file not found \(check the split_files\['test'\] argument\)"):
        read_flickr_token_file(TOKENS, images, dict(LISTS, test=tmp_path / "test.txt"))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(DatasetError, match=r"empty\.txt: file is empty, expected a list of image file names"):
        read_flickr_token_file(TOKENS, images, dict(LISTS, test=empty))
    binary = tmp_path / "tokens.bin"
    binary.write_bytes(b"\xff\xfe\x00junk")
    with pytest.raises(DatasetError, match=r"tokens\.bin: not UTF-8 text"):
        read_flickr_token_file(binary, images, LISTS)
    with pytest.raises(ValueError, match="split_files must map split names"):
        read_flickr_token_file(TOKENS, images, {})


def test_token_file_missing_images(images, tmp_path):
    (images / "1009434119_febe49276a.jpg").unlink()
    (images / UNLISTED).unlink()  # in no list: not checked
    with pytest.raises(DatasetError, match=re.escape(f"{TOKENS}: 1 of 7 image files are missing under image_dir=")
                       + r"(.|\n)*1009434119_febe49276a\.jpg(.|\n)*Flicker8k_Dataset/ in the original release"):
        read_flickr_token_file(TOKENS, images, LISTS)
    out = read_flickr_token_file(TOKENS, tmp_path / "elsewhere", LISTS, check_images=False)
    assert sum(map(len, out.values())) == 7


# --- Kaggle's captions.txt ---------------------------------------------------------


def _csv_split_by_rule(names):
    """The documented rule, restated: sha1 order; first k test, next k val, rest train."""
    ordered = sorted(names, key=lambda n: hashlib.sha1(n.encode()).hexdigest())
    k = min(1000, max(1, len(ordered) // 8))
    return {n: "test" if i < k else "val" if i < 2 * k else "train" for i, n in enumerate(ordered)}


def test_csv_records_and_split(images):
    out = read_captions_csv(CSV, images)
    assert list(out) == ["train", "val", "test"]
    assert [len(out[s]) for s in out] == [6, 1, 1]
    split_of = {Path(r.path).name: s for s, recs in out.items() for r in recs}
    assert split_of == _csv_split_by_rule(NAMES)
    by_name = {Path(r.path).name: r for recs in out.values() for r in recs}
    assert by_name["1003163366_44323f5815.jpg"].captions == (
        "A man lays on a bench while his dog sits by him .", "A man, a dog, and a bench : a quiet afternoon .")
    assert by_name["1007129816_e794419615.jpg"].captions[2] == 'A man with a sign reading "no parking" .'
    for s, recs in out.items():
        assert all(r.split == s for r in recs)
        assert [r.image_id for r in recs] == sorted(r.image_id for r in recs)


def test_layouts_give_equal_records(images):
    token = {r.image_id: r for recs in read_flickr_token_file(TOKENS, images, LISTS).values() for r in recs}
    csv_ = {r.image_id: r for recs in read_captions_csv(CSV, images).values() for r in recs}
    assert set(token) == set(csv_) - {flickr_image_id(UNLISTED)}
    for image_id, rec in token.items():
        assert (rec.path, rec.captions) == (csv_[image_id].path, csv_[image_id].captions)
        if rec.split == csv_[image_id].split:
            assert rec == csv_[image_id]


def test_csv_split_independent_of_row_order(images, tmp_path):
    lines = CSV.read_text().splitlines()
    shuffled = tmp_path / "captions.txt"
    shuffled.write_text("\n".join([lines[0]] + lines[1:][::3] + lines[1:][1::3] + lines[1:][2::3]) + "\n")
    a, b = read_captions_csv(CSV, images), read_captions_csv(shuffled, images)
    assert {s: [(r.image_id, r.path, set(r.captions)) for r in recs] for s, recs in a.items()} == \
           {s: [(r.image_id, r.path, set(r.captions)) for r in recs] for s, recs in b.items()}


def test_csv_split_sizes_for_kaggle_flickr8k(tmp_path):
    # Kaggle's captions.txt has 8091 images: Karpathy's val and test sizes, the rest train.
    names = [f"{i:010d}_{i * 7919 % 10**10:010x}.jpg" for i in range(8091)]
    big = tmp_path / "captions.txt"
    big.write_text("image,caption\n" + "".join(f"{n},A caption .\n" for n in names))
    out = read_captions_csv(big, tmp_path, check_images=False)
    assert {s: len(r) for s, r in out.items()} == {"train": 6091, "val": 1000, "test": 1000}
    split_of = {Path(r.path).name: s for s, recs in out.items() for r in recs}
    assert split_of == _csv_split_by_rule(names)


def test_csv_tiny_files(tmp_path, caplog):
    two = tmp_path / "captions.txt"
    two.write_text("image,caption\na.jpg,One .\nb.jpg,Two .\n")
    with caplog.at_level(logging.WARNING, logger="captioner.datasets"):
        out = read_captions_csv(two, tmp_path, check_images=False)
    assert list(out) == ["train"] and len(out["train"]) == 2
    assert "only 2 images: all go to train" in caplog.text
    three = tmp_path / "three.txt"
    three.write_text("image,caption\na.jpg,One .\nb.jpg,Two .\nc.jpg,Three .\n")
    assert {s: len(r) for s, r in read_captions_csv(three, tmp_path, check_images=False).items()} == \
           {"train": 1, "val": 1, "test": 1}


@pytest.mark.parametrize("text, match", [
    ("1000268201_693b08cb0e.jpg,A child .\n", r"line 1: expected the header 'image,caption'"),
    ("\nimage\tcaption\n", r"line 2: expected the header 'image,caption'"),
    ("image,caption\na.jpg,A dog, a cat .\n", r"line 2: 3 columns, expected 2 \(image,caption\); a caption with "
                                              r"commas must be in double quotes"),
    ("image,caption\n\na.jpg\n", r"line 3: 1 columns, expected 2"),
    ('image,caption\na.jpg,"Two\nlines ."\nb.jpg, \n', r"line 4: empty caption for b\.jpg"),
    ("image,caption\n,A caption .\n", r"line 2: empty image file name"),
    ("image,caption\n\n", r"has a header but no captions"),
])
def test_csv_errors(tmp_path, text, match):
    path = tmp_path / "captions.txt"
    path.write_text(text)
    with pytest.raises(DatasetError, match=re.escape(str(path)) + ": " + match):
        read_captions_csv(path, tmp_path, check_images=False)


def test_csv_missing_images(images, tmp_path):
    with pytest.raises(DatasetError, match=re.escape(f"{CSV}: 8 of 8 image files are missing under image_dir=")
                       + r"(.|\n)*\(that folder does not exist\)(.|\n)*Images/ beside captions\.txt"):
        read_captions_csv(CSV, tmp_path / "Images")


# --- sources and the command line --------------------------------------------------


def _eval_args(*argv):
    return evaluate.parse_args(["--checkpoint", "unused.pt", *map(str, argv)])


def test_cli_flickr_tokens(images):
    splits = ",".join(f"{s}={p}" for s, p in LISTS.items())
    args = _eval_args("--flickr-tokens", TOKENS, "--flickr-splits", splits, "--images", images)
    source = cli.data_source(args)
    assert isinstance(source, sources.DataSource) and source.name.startswith("Flickr8k.token-")
    assert source.splits == read_flickr_token_file(TOKENS, images, LISTS)
    # --data flickr explicitly, the lists as repeated flags: the same source, the same cache name.
    repeated = [a for s, p in LISTS.items() for a in ("--flickr-splits", f"{s}={p}")]
    again = cli.data_source(_eval_args("--data", "flickr", "--flickr-tokens", TOKENS, *repeated, "--images", images))
    assert again.name == source.name and again.splits == source.splits
    # Other lists (or the same lists for other splits) are other data: another name.
    swapped = cli.data_source(_eval_args("--flickr-tokens", TOKENS, "--images", images, "--flickr-splits",
                                         f"train={LISTS['train']},val={LISTS['test']},test={LISTS['val']}"))
    assert swapped.name != source.name


def test_cli_flickr_default_split_lists(images, tmp_path):
    folder = tmp_path / "flickr8k"
    folder.mkdir()
    for p in (TOKENS, *LISTS.values()):
        shutil.copy(p, folder / p.name)
    source = cli.data_source(_eval_args("--flickr-tokens", folder / TOKENS.name, "--images", images))
    assert {s: len(r) for s, r in source.splits.items()} == {"train": 5, "val": 1, "test": 1}


def test_cli_captions_csv(images, tmp_path):
    source = cli.data_source(_eval_args("--captions-csv", CSV, "--images", images))
    assert source.name.startswith("captions-csv-")
    assert source.splits == read_captions_csv(CSV, images)
    assert cli.data_source(_eval_args("--data", "csv", "--captions-csv", CSV, "--images", images)).name == source.name
    other = tmp_path / "captions.txt"
    shutil.copy(CSV, other)
    assert cli.data_source(_eval_args("--captions-csv", other, "--images", images)).name != source.name


@pytest.mark.parametrize("argv, match", [
    (["--captions-csv", CSV], r"--data csv needs --captions-csv FILE and one --images DIR"),
    (["--data", "flickr", "--images", "x"], r"--data flickr needs --flickr-tokens FILE and one --images DIR"),
    (["--flickr-tokens", TOKENS, "--captions-csv", CSV, "--images", "x"],
     r"give one data source, not --flickr-tokens and --captions-csv"),
    (["--karpathy-json", "d.json", "--captions-csv", CSV, "--images", "x"],
     r"give one data source, not --karpathy-json and --captions-csv"),
    (["--flickr-tokens", TOKENS, "--flickr-splits", "train", "--images", "x"], r"--flickr-splits expects SPLIT=PATH"),
    (["--captions-csv", CSV, "--flickr-splits", "train=a.txt", "--images", "x"],
     r"--flickr-splits is for --flickr-tokens"),
])
def test_cli_flag_errors(argv, match):
    with pytest.raises(SystemExit, match=match):
        cli.data_source(_eval_args(*argv))


def test_cli_dataset_errors_reach_the_user(images, tmp_path):
    with pytest.raises(DatasetError, match=r"Flickr_8k\.trainImages\.txt: file not found"):
        cli.data_source(_eval_args("--flickr-tokens", TOKENS, "--images", images, "--flickr-splits",
                                   f"train={tmp_path / 'Flickr_8k.trainImages.txt'}"))
