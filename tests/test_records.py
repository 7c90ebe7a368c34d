"""Reading LLaVA / Video-LLaVA JSON, JSONL and Video-ChatGPT QA files."""

from __future__ import annotations

import json

import pytest

from vlm_cli.data import load_records, unique_media
from vlm_cli.errors import DataError


def test_llava_json_and_jsonl(tmp_path):
    items = [{"id": "a", "video": "v/a.mp4", "conversations": [
                 {"from": "human", "value": "<video>\nWhat?"}, {"from": "gpt", "value": "x"}]},
             {"id": "b", "image": ["i/b.png", "i/c.png"]},
             {"id": "c", "audio": "s/c.wav"},
             {"id": "d", "video": "v/a.mp4"}]
    (tmp_path / "d.json").write_text(json.dumps(items))
    (tmp_path / "d.jsonl").write_text("\n".join(map(json.dumps, items)) + "\n\n")
    for name in ("d.json", "d.jsonl"):
        records = load_records(tmp_path / name)
        assert [r.id for r in records] == ["a", "b", "c", "d"]
        assert records[0].conversations[1]["value"] == "x"
        refs = unique_media(records)
        assert [(r.key, r.given) for r in refs] == [
            ("video", "v/a.mp4"), ("image", "i/b.png"), ("image", "i/c.png"), ("audio", "s/c.wav")]
        assert refs[0].path == tmp_path / "v/a.mp4"
    assert load_records(tmp_path / "d.json", media_root="/data")[0].media[0].path.as_posix() \
        == "/data/v/a.mp4"


def test_video_chatgpt_layout_resolves_extension(tmp_path):
    (tmp_path / "clip1.mp4").write_bytes(b"")
    qs = [{"video_name": "clip1", "question": "what?", "question_id": 7},
          {"video_name": "gone", "question": "what?", "question_id": 8}]
    (tmp_path / "q.json").write_text(json.dumps(qs))
    records = load_records(tmp_path / "q.json")
    assert records[0].id == "7" and records[0].media[0].path == tmp_path / "clip1.mp4"
    assert records[1].media[0].path == tmp_path / "gone"  # reported missing when decoded


def test_single_media_file(tmp_path):
    (rec,) = load_records(tmp_path / "x.wav")
    assert rec.media[0].key == "audio"


@pytest.mark.parametrize("content, message", [
    ("{\"not\": \"a list\"}", "expected a JSON list"),
    ("[1, 2]", "item 0: expected an object"),
    ("[{\"video\": 3}]", "item 0: 'video' must be a path"),
    ("[{\"video\": \"a.mp4\", \"conversations\": [{\"from\": \"bot\", \"value\": \"x\"}]}]",
     "'conversations' must be a list"),
    ("[{", "invalid JSON"),
])
def test_bad_files_name_the_file_and_item(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(DataError) as err:
        load_records(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_missing_data_file(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        load_records(tmp_path / "nope.json")
    (tmp_path / "bad.jsonl").write_text("{}\nnot json\n")
    with pytest.raises(DataError, match=r"bad.jsonl:2: invalid JSON"):
        load_records(tmp_path / "bad.jsonl")
