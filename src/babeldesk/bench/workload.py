"""Workloads for ``babeldesk bench``: the built-in multilingual support mix, or a JSONL file.

The built-in mix models what a shop's support inbox looks like: a few recurring questions
dominate (a Zipf-skewed choice over the 24 demo intents, most popular first), customers
write in many languages (15 here, weighted), each question comes in several wordings, and
a share of messages are free-form questions that no knowledge-base entry answers, so they
need the model. The phrasings are written for this benchmark, apart from the knowledge
base's own examples and the intent evaluation set, so matching them is a real test.

Everything is pure and seeded: the same ``Mix`` and seed give the same message sequence.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from babeldesk.errors import ConfigError


@dataclass(frozen=True, slots=True)
class WorkItem:
    """One message to send. ``intent`` is None for free-form (model) questions."""

    message: str
    language: str  # ISO 639-1 code the message is written in
    intent: str | None = None
    kind: str = "intent"  # "intent" | "free_form" | "file"
    max_tokens: int | None = None  # openai target: completion budget (None: the tool's default)


# Intents in popularity order (the Zipf rank). Phrasings: {language: [messages]}.
INTENT_PHRASES: dict[str, dict[str, list[str]]] = {
    "order_status": {
        "en": ["any update on my parcel? ordered on monday", "what's happening with order 55120"],
        "es": ["¿en qué estado está mi compra del viernes?"],
        "fr": ["où en est ma commande passée jeudi ?"],
        "de": ["Was ist mit meiner Bestellung vom Montag los?"],
        "pt": ["qual a situação da minha encomenda de ontem?"],
        "zh": ["我上周下的单现在到哪了？"],
        "ja": ["先週の注文の状況を教えてください"],
        "ru": ["что с моим заказом от понедельника?"],
        "nl": ["wat is de status van mijn bestelling van vorige week?"],
    },
    "delivery_time": {
        "en": ["placing an order tonight, roughly when would it get to me", "how many days until a package shows up"],
        "es": ["¿cuántos días tarda en llegar un pedido normal?"],
        "it": ["quanti giorni servono per ricevere un ordine?"],
        "de": ["Wie lange ist ein Paket normalerweise unterwegs?"],
        "ko": ["주문하면 보통 며칠 만에 도착하나요?"],
        "ar": ["كم يوم يحتاج الطلب حتى يصلني؟"],
        "tr": ["siparişim kaç günde elime ulaşır?"],
    },
    "refund_status": {
        "en": ["still waiting on my money back from the return", "refund hasn't hit my account yet"],
        "fr": ["je n'ai toujours pas reçu l'argent de mon retour"],
        "es": ["todavía no veo el dinero de la devolución en mi cuenta"],
        "pt": ["o dinheiro da devolução ainda não caiu na conta"],
        "hi": ["मेरे रिटर्न का पैसा अभी तक वापस नहीं आया"],
        "zh": ["退货的钱怎么还没到我账户上"],
        "pl": ["kiedy dostanę zwrot pieniędzy za odesłany towar?"],
    },
    "return_policy": {
        "en": ["how many days do i have to send something back", "can i return stuff i didn't like"],
        "de": ["Bis wann darf ich Sachen zurückschicken?"],
        "it": ["ho ancora tempo per rimandare indietro una gonna comprata il mese scorso?"],
        "ja": ["購入から3週間たった服でもまだ返品を受け付けてもらえますか"],
        "ru": ["купил куртку три недели назад, ещё можно её вернуть?"],
        "es": ["¿hasta cuándo puedo devolver algo que compré?"],
    },
    "start_return": {
        "en": ["i want to send these shoes back, how do i start", "need a return label please"],
        "fr": ["comment lancer un retour pour ma veste ?"],
        "pt": ["quero devolver uma peça, como começo?"],
        "ko": ["반품 신청은 어떻게 하나요?"],
        "ar": ["أريد إرجاع منتج، كيف أبدأ؟"],
    },
    "shipping_cost": {
        "en": ["what do you charge for delivery", "is shipping free above some amount"],
        "es": ["¿cuánto cobran por el envío?"],
        "de": ["Was kostet der Versand bei euch?"],
        "zh": ["运费要多少钱？"],
        "hi": ["डिलीवरी चार्ज कितना लगता है?"],
    },
    "cancel_order": {
        "en": ["please cancel the order i just placed", "can i still stop my order from going out"],
        "it": ["vorrei annullare l'ordine che ho appena fatto"],
        "fr": ["je voudrais annuler ma commande d'hier"],
        "ja": ["さっきの注文をキャンセルしたいです"],
        "ru": ["хочу отменить свой заказ"],
    },
    "damaged_item": {
        "en": ["the mug arrived in pieces", "box was crushed and the lamp is broken"],
        "es": ["el producto llegó roto, ¿qué hago?"],
        "pt": ["o produto chegou quebrado"],
        "de": ["Die Ware ist beschädigt angekommen"],
        "ko": ["물건이 파손된 채로 왔어요"],
    },
    "missing_item": {
        "en": ["one of the three things i ordered wasn't in the box", "package came with an item missing"],
        "fr": ["le chargeur n'était pas dans le carton avec le reste"],
        "zh": ["包裹里少了一件东西"],
        "ar": ["ينقص منتج من الطرد الذي وصلني"],
    },
    "payment_failed": {
        "en": ["checkout keeps rejecting my card", "payment declined but my card works elsewhere"],
        "es": ["intento pagar y la web dice que mi tarjeta no es válida"],
        "it": ["il pagamento non va a buon fine"],
        "ru": ["не проходит оплата картой"],
        "tr": ["ödeme sayfasında kartım sürekli hata veriyor"],
    },
    "exchange_item": {
        "en": ["can i swap this shirt for a bigger size", "want a different colour instead"],
        "de": ["Kann ich die Hose gegen eine andere Größe tauschen?"],
        "pt": ["a calça ficou apertada, dá pra pegar um número maior no lugar?"],
        "ja": ["サイズ交換はできますか"],
    },
    "payment_methods": {
        "en": ["is paying with apple pay or paypal an option at checkout", "which ways can i pay"],
        "fr": ["on peut régler en plusieurs fois ou seulement par carte ?"],
        "ko": ["카카오페이나 계좌이체로도 결제가 가능한가요?"],
        "hi": ["क्या आप UPI या कार्ड से पेमेंट लेते हैं?"],
        "nl": ["welke betaalopties hebben jullie behalve creditcard?"],
    },
    "international_shipping": {
        "en": ["do you deliver to canada", "can you ship outside the EU"],
        "es": ["¿hacen envíos a México?"],
        "de": ["Schickt ihr Pakete auch nach Österreich und Liechtenstein?"],
        "ar": ["هل تشحنون إلى الإمارات؟"],
    },
    "promo_code": {
        "en": ["my discount code isn't doing anything", "coupon says invalid at checkout"],
        "it": ["ho inserito il coupon della newsletter ma il prezzo non cambia"],
        "zh": ["结账时输入折扣码提示无效是怎么回事"],
        "pl": ["wpisałem kupon z maila, ale cena się nie zmienia"],
    },
    "change_shipping_address": {
        "en": ["i put the wrong street on my order", "can you send it to my office instead"],
        "fr": ["je me suis trompé d'adresse de livraison"],
        "ru": ["можно поменять адрес доставки?"],
        "pt": ["preciso mudar o endereço de entrega"],
    },
    "reset_password": {
        "en": ["can't log in, forgot my password", "password reset email never arrives"],
        "es": ["no me acuerdo de la clave para entrar a mi cuenta"],
        "ja": ["ログイン用のパスワードを再設定する方法を教えて"],
        "ko": ["로그인 비밀번호를 새로 설정하고 싶어요"],
    },
    "invoice_copy": {
        "en": ["i need a receipt for my company", "where can i download the invoice"],
        "de": ["Ich brauche eine Rechnung für meine Bestellung"],
        "it": ["mi serve la fattura dell'ordine"],
        "nl": ["waar vind ik de factuur van mijn bestelling?"],
    },
    "warranty": {
        "en": ["my headphones stopped working after 4 months, is that covered",
               "how long is the guarantee"],
        "fr": ["quelle est la durée de la garantie ?"],
        "zh": ["保修期是多久？"],
        "hi": ["इस सामान पर कितनी वारंटी है?"],
    },
    "contact_human": {
        "en": ["let me talk to a real person", "i want an actual agent not a bot"],
        "es": ["pásame con alguien del equipo, no con un robot"],
        "de": ["Ich möchte mit einem Mitarbeiter sprechen"],
        "ar": ["ممكن تحولني لشخص حقيقي من خدمة العملاء؟"],
    },
    "update_payment_method": {
        "en": ["how do i replace the card saved on my account", "remove my old card please"],
        "pt": ["como troco o cartão salvo na conta?"],
        "ru": ["как поменять сохранённую карту?"],
    },
    "cancel_subscription": {
        "en": ["stop my monthly box subscription", "how do i end my membership"],
        "fr": ["comment résilier mon abonnement ?"],
        "ja": ["定期便を解約したいです"],
        "tr": ["aboneliğimi iptal etmek istiyorum"],
    },
    "update_account_email": {
        "en": ["i want to change the email on my account", "new email address, how to update it"],
        "es": ["¿cómo cambio el correo de mi cuenta?"],
        "ko": ["계정 이메일을 바꾸고 싶어요"],
    },
    "opening_hours": {
        "en": ["when is your support team available", "can i reach customer service on a sunday afternoon"],
        "it": ["a che ora aprite il servizio clienti?"],
        "zh": ["你们人工客服周末也在线吗"],
        "pl": ["w jakich godzinach działa obsługa klienta?"],
    },
    "delete_account": {
        "en": ["please erase my account and all my data", "close my account for good"],
        "de": ["Bitte löscht mein Konto komplett"],
        "hi": ["मेरा अकाउंट हमेशा के लिए डिलीट कर दो"],
        "nl": ["verwijder alstublieft mijn account"],
    },
}

# Questions no knowledge-base entry answers: they reach the model (or a handoff).
FREE_FORM: dict[str, list[str]] = {
    "en": ["can i put the wool blanket in the dryer?",
           "which size should i get if i'm between medium and large?",
           "do you offer gift wrapping for birthday presents?",
           "is the bamboo cutting board safe for the dishwasher?",
           "what's the difference between your two rain jackets?"],
    "es": ["¿la chaqueta de lana abriga lo suficiente para la nieve?",
           "¿qué talla me recomiendas si mido 1,80?"],
    "fr": ["est-ce que le sac à dos tient un ordinateur de 16 pouces ?"],
    "de": ["Ist der Rucksack wasserdicht genug für Radtouren?"],
    "pt": ["essa panela funciona em fogão de indução?"],
    "it": ["la borraccia mantiene l'acqua fredda tutto il giorno?"],
    "zh": ["这件外套适合冬天穿吗？"],
    "ja": ["このバッグはノートパソコンが入りますか"],
}

# Share of messages by language: English-heavy, a long tail (sums to 1 after normalising).
LANGUAGE_WEIGHTS: dict[str, float] = {
    "en": 0.34, "es": 0.12, "de": 0.08, "fr": 0.08, "pt": 0.06, "it": 0.05, "zh": 0.05,
    "ja": 0.04, "ko": 0.03, "ru": 0.03, "ar": 0.03, "hi": 0.03, "nl": 0.02, "tr": 0.02,
    "pl": 0.02,
}


@dataclass(frozen=True)
class Mix:
    """What the built-in workload draws: ``free_form_share`` of messages are free-form,
    the rest pick an intent with probability ~ 1 / rank**``intent_skew``."""

    free_form_share: float = 0.1  # 0..1
    intent_skew: float = 1.0  # Zipf exponent over the popularity order; 0 = uniform
    languages: Mapping[str, float] = field(default_factory=lambda: dict(LANGUAGE_WEIGHTS))

    def __post_init__(self) -> None:
        if not 0.0 <= self.free_form_share <= 1.0:
            raise ConfigError("--free-form-share", "must be in [0, 1]")
        if self.intent_skew < 0:
            raise ConfigError("--intent-skew", "must be >= 0")
        known = set(LANGUAGE_WEIGHTS)
        unknown = sorted(set(self.languages) - known)
        if unknown:
            raise ConfigError("--languages", f"no built-in phrasings for {', '.join(unknown)} "
                              f"(have: {', '.join(sorted(known))})")
        if not self.languages or any(w < 0 for w in self.languages.values()) \
                or sum(self.languages.values()) <= 0:
            raise ConfigError("--languages", "need at least one language with a weight > 0")


def parse_languages(spec: str) -> dict[str, float]:
    """``en,es,de`` (built-in weights) or ``en=0.5,es=0.5`` -> ``{code: weight}``."""
    out: dict[str, float] = {}
    for part in spec.split(","):
        code, eq, weight = part.strip().partition("=")
        if not code:
            continue
        if code not in LANGUAGE_WEIGHTS:
            raise ConfigError("--languages", f"no built-in phrasings for {code!r}")
        try:
            out[code] = float(weight) if eq else LANGUAGE_WEIGHTS[code]
        except ValueError:
            raise ConfigError("--languages", f"{part!r}: weight must be a number") from None
    return out


def _normalised(weights: Sequence[float]) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    return w / w.sum()


def builtin_workload(n: int, mix: Mix | None = None, seed: int = 0) -> list[WorkItem]:
    """``n`` messages drawn from the built-in mix: pick a language by weight, then free-form
    or an intent (Zipf over the intents with phrasings in that language), then a wording."""
    mix = mix or Mix()
    rng = np.random.default_rng(seed)
    order = list(INTENT_PHRASES)  # popularity rank 1..24
    rank_weight = {intent: 1.0 / (i + 1) ** mix.intent_skew for i, intent in enumerate(order)}
    langs = [code for code, w in mix.languages.items() if w > 0]
    lang_p = _normalised([mix.languages[c] for c in langs])
    items: list[WorkItem] = []
    for _ in range(n):
        lang = langs[int(rng.choice(len(langs), p=lang_p))]
        if lang in FREE_FORM and rng.random() < mix.free_form_share:
            phrases = FREE_FORM[lang]
            items.append(WorkItem(phrases[int(rng.integers(len(phrases)))], lang, None,
                                  "free_form"))
            continue
        intents = [i for i in order if lang in INTENT_PHRASES[i]]
        p = _normalised([rank_weight[i] for i in intents])
        intent = intents[int(rng.choice(len(intents), p=p))]
        phrases = INTENT_PHRASES[intent][lang]
        items.append(WorkItem(phrases[int(rng.integers(len(phrases)))], lang, intent))
    return items


def parse_jsonl_line(line: str, where: str) -> WorkItem | None:
    """One JSONL line -> ``WorkItem`` (None for a blank line). Accepted keys: ``message``
    (or ``text`` / ``prompt``), optional ``language`` (or ``lang``), ``intent``,
    ``max_tokens``."""
    if not line.strip():
        return None
    try:
        obj: Any = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ConfigError(where, f"invalid JSON: {exc.msg}") from None
    if not isinstance(obj, dict):
        raise ConfigError(where, "must be a JSON object")
    text = obj.get("message", obj.get("text", obj.get("prompt")))
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(where, "needs a non-empty string 'message' (or 'text' / 'prompt')")
    max_tokens = obj.get("max_tokens")
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int)
                                   or max_tokens < 1):
        raise ConfigError(where, "max_tokens must be an integer >= 1")
    return WorkItem(text, str(obj.get("language", obj.get("lang", "")) or ""),
                    obj.get("intent"), "file", max_tokens)


def load_jsonl(path: str | Path) -> list[WorkItem]:
    """A JSONL workload file, in order; fails naming the file and line."""
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(str(p), f"cannot read: {exc.strerror}") from exc
    items = [item for i, line in enumerate(lines, 1)
             if (item := parse_jsonl_line(line, f"{p}:{i}")) is not None]
    if not items:
        raise ConfigError(str(p), "no messages in the workload file")
    return items


def cycle(items: Sequence[WorkItem], n: int) -> list[WorkItem]:
    """``n`` items, repeating ``items`` in order."""
    return [items[i % len(items)] for i in range(n)]
