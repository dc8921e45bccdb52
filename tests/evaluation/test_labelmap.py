import pytest

from stmixer.evaluation import LabelMapError, parse_labelmap, read_labelmap

V21 = """item {
  name: "bend/bow (at the waist)"
  id: 1
}
item {
  name: "crouch/kneel"
  id: 3
}
"""

V22 = """label {
  name: "bend/bow (at the waist)"
  label_id: 1
  label_type: PERSON_MOVEMENT
}
label {
  name: "answer phone"
  label_id: 80
  label_type: OBJECT_MANIPULATION
}
"""


def test_v21_item_form(tmp_path):
    path = tmp_path / "ava_action_list_v2.1.pbtxt"
    path.write_text(V21)
    lm = read_labelmap(path)
    assert lm.ids == (1, 3)
    assert lm.names == {1: "bend/bow (at the waist)", 3: "crouch/kneel"}
    assert lm.max_id == 3


def test_v22_label_form():
    lm = parse_labelmap(V22)
    assert lm.ids == (1, 80) and lm.names[80] == "answer phone"


def test_one_line_blocks_comments_and_escapes():
    text = '# AVA\nitem { name: "say \\"hi\\"" id: 7 }  # trailing\nlabel{name:"b" label_id:2 label_type:X}\n'
    lm = parse_labelmap(text)
    assert lm.ids == (7, 2) and lm.names[7] == 'say "hi"'


@pytest.mark.parametrize(
    "text, message",
    [
        ('item {\n  name: "a"\n}\n', r"f.pbtxt:1: item block without id"),
        ('item {\n  id: 2\n}\n', r"f.pbtxt:1: item block without name"),
        ('item {\n  name: "a"\n  id: two\n}\n', r"f.pbtxt:3: id must be an integer, found 'two'"),
        ('item {\n  name: a\n  id: 1\n}\n', r"f.pbtxt:2: name must be a quoted string"),
        ('item {\n  name: "a"\n  id: 0\n}\n', r"f.pbtxt:3: class ids must be >= 1"),
        ('item { name: "a" id: 1 }\nitem { name: "b" id: 1 }\n', r"f.pbtxt:2: duplicate id 1 \(first at line 1\)"),
        ('item { name: "a" id: 1 }\nitem { name: "a" id: 2 }\n', r"f.pbtxt:2: duplicate name 'a'"),
        ('item { name: "a" idd: 1 }\n', r"f.pbtxt:1: unknown field 'idd'"),
        ('item {\n  name: "a"\n  id: 1\n', r"f.pbtxt:3: unexpected end of file"),
        ('items { name: "a" id: 1 }\n', r"f.pbtxt:1: expected 'item \{' or 'label \{', found 'items'"),
        ('item { name: "a" id: 1 } }\n', r"f.pbtxt:1: expected word, found '\}'"),
        ("", r"f.pbtxt: no 'item \{ ... \}' or 'label \{ ... \}' block found"),
        ('item { name: "a" id: 1 } $\n', r"f.pbtxt:1: unexpected character '\$'"),
    ],
)
def test_malformed_label_maps_name_file_and_line(text, message):
    with pytest.raises(LabelMapError, match=message):
        parse_labelmap(text, "f.pbtxt")
