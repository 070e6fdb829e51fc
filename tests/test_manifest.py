import pytest

from mirkit.data.manifest import ManifestError, load_tracks, read_manifest


def test_track_ids_are_paths_unless_a_file_holds_several_clips(tmp_path):
    (tmp_path / "m.csv").write_text("path,split,offset,duration,key\n"
                                    "a.wav,train,,6.5,C major\n"
                                    "long.wav,valid,0,30,A minor\n"
                                    "long.wav,test,30,30,A minor\n")
    tracks = read_manifest(tmp_path / "m.csv")
    assert [t.track_id for t in tracks] == ["a.wav", "long.wav@0+30", "long.wav@30+30"]
    assert tracks[0].duration == 6.5 and tracks[2].offset == 30.0 and tracks[1].labels == {"key": "A minor"}
    assert tracks[0].path == (tmp_path / "a.wav").resolve()


def test_folder_and_manifest_name_a_track_alike(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x.flac").write_bytes(b"")
    (tmp_path / "m.csv").write_text("path\nsub/x.flac\n")
    assert [t.track_id for t in load_tracks(tmp_path)] == [t.track_id for t in read_manifest(tmp_path / "m.csv")]


@pytest.mark.parametrize("text, words", [("file\nx.wav\n", "needs a 'path' column"),
                                         ("path,offset\nx.wav,soon\n", "offset='soon' is not a number"),
                                         ("path,track_id\nx.wav,a\ny.wav,a\n", "duplicate track id 'a'"),
                                         ("path\n\n,\n", "empty path")])
def test_bad_manifests_name_the_row_and_reason(tmp_path, text, words):
    (tmp_path / "m.csv").write_text(text)
    with pytest.raises(ManifestError, match=words):
        read_manifest(tmp_path / "m.csv")


def test_missing_manifest(tmp_path):
    with pytest.raises(ManifestError, match="manifest not found"):
        read_manifest(tmp_path / "none.csv")
