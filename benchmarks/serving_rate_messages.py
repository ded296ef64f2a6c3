"""Customer messages for the serving-rate benchmark: templated paraphrases of shop
questions in seven languages, written for this benchmark (not taken from the KB examples
nor from benchmarks/data/intent_eval.jsonl).

Every template has a number slot (an order number, a count of items or tries), so the
stream of messages never repeats and each one is new to the answer cache (whose key is
the normalised text, digits included), while the matcher sees the same text for every
number (it maps digit runs to "0"): whether a template is answered from the knowledge
base without the model verifier can be checked once per template skeleton (``screen``).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

# intent -> language -> message templates; "{n}" is the number slot
TEMPLATES: dict[str, dict[str, tuple[str, ...]]] = {
    "order_status": {
        "en": ("Where is my order PM-{n}? I still have no tracking update.",
               "Can you tell me the status of order PM-{n}?"),
        "es": ("¿Dónde está mi pedido PM-{n}? No veo ninguna actualización del envío.",),
        "de": ("Wo ist meine Bestellung PM-{n}? Die Sendungsverfolgung zeigt nichts Neues.",),
        "fr": ("Où en est ma commande PM-{n} ? Le suivi ne bouge plus.",),
        "it": ("Dov'è il mio ordine PM-{n}? Il tracciamento non si aggiorna.",),
        "pt": ("Onde está a minha encomenda PM-{n}? O rastreio não atualiza.",),
        "ru": ("Где мой заказ PM-{n}? Отслеживание не обновляется.",),
    },
    "delivery_time": {
        "en": ("How many days does delivery take? I need {n} pillows before the weekend.",),
        "es": ("¿Cuántos días tarda la entrega? Necesito {n} cojines antes del fin de semana.",),
        "de": ("Wie lange dauert die Lieferung? Ich brauche {n} Kissen bis zum Wochenende.",),
        "fr": ("Combien de jours faut-il pour la livraison ? J'ai besoin de {n} coussins avant le week-end.",),
        "it": ("Quanti giorni ci vogliono per la consegna? Mi servono {n} cuscini entro il fine settimana.",),
        "pt": ("Quantos dias demora a entrega? Preciso de {n} almofadas antes do fim de semana.",),
    },
    "shipping_cost": {
        "en": ("How much is shipping for an order of {n} items?",),
        "es": ("¿Cuánto cuesta el envío de un pedido de {n} artículos?",),
        "de": ("Was kosten die Versandkosten für eine Bestellung mit {n} Artikeln?",),
        "fr": ("Combien coûtent les frais de port pour une commande de {n} articles ?",),
        "it": ("Quanto costa la spedizione per un ordine di {n} articoli?",),
    },
    "cancel_order": {
        "en": ("I want to cancel my order PM-{n}, I placed it by mistake.",),
        "es": ("Quiero cancelar mi pedido PM-{n}, lo hice por error.",),
        "de": ("Ich möchte meine Bestellung PM-{n} stornieren, sie war ein Versehen.",),
        "fr": ("Je veux annuler ma commande PM-{n}, je l'ai passée par erreur.",),
        "it": ("Voglio annullare il mio ordine PM-{n}, l'ho fatto per sbaglio.",),
        "pt": ("Quero cancelar a minha encomenda PM-{n}, fiz por engano.",),
    },
    "refund_status": {
        "en": ("I returned order PM-{n} two weeks ago, when will I get my refund?",),
        "es": ("Devolví el pedido PM-{n} hace dos semanas, ¿cuándo recibiré el reembolso?",),
        "de": ("Ich habe die Bestellung PM-{n} vor zwei Wochen zurückgeschickt, wann bekomme ich mein Geld zurück?",),
        "fr": ("J'ai renvoyé la commande PM-{n} il y a deux semaines, quand serai-je remboursé ?",),
        "it": ("Ho reso l'ordine PM-{n} due settimane fa, quando riceverò il rimborso?",),
    },
    "reset_password": {
        "en": ("I forgot my password and can't log in, I tried {n} times.",),
        "es": ("Olvidé mi contraseña y no puedo entrar, lo intenté {n} veces.",),
        "de": ("Ich habe mein Passwort vergessen und komme nicht rein, schon {n} Versuche.",),
        "fr": ("J'ai oublié mon mot de passe et je n'arrive pas à me connecter, j'ai essayé {n} fois.",),
        "it": ("Ho dimenticato la password e non riesco ad accedere, ho provato {n} volte.",),
        "pt": ("Esqueci a minha palavra-passe e não consigo entrar, tentei {n} vezes.",),
    },
    "payment_methods": {
        "en": ("Which payment methods do you accept? My order is {n} euros.",),
        "es": ("¿Qué métodos de pago aceptan? Mi pedido es de {n} euros.",),
        "de": ("Welche Zahlungsarten akzeptiert ihr? Meine Bestellung kostet {n} Euro.",),
        "fr": ("Quels moyens de paiement acceptez-vous ? Ma commande fait {n} euros.",),
    },
    "invoice_copy": {
        "en": ("Can you send me an invoice for order PM-{n}? I need it for my company.",),
        "es": ("¿Me pueden enviar la factura del pedido PM-{n}? La necesito para mi empresa.",),
        "de": ("Könnt ihr mir eine Rechnung für die Bestellung PM-{n} schicken? Ich brauche sie für die Firma.",),
        "fr": ("Pouvez-vous m'envoyer une facture pour la commande PM-{n} ? J'en ai besoin pour mon entreprise.",),
    },
    "damaged_item": {
        "en": ("The vase in order PM-{n} arrived broken, what can I do?",),
        "es": ("El jarrón del pedido PM-{n} llegó roto, ¿qué puedo hacer?",),
        "de": ("Die Vase aus Bestellung PM-{n} kam kaputt an, was kann ich tun?",),
        "fr": ("Le vase de la commande PM-{n} est arrivé cassé, que puis-je faire ?",),
        "it": ("Il vaso dell'ordine PM-{n} è arrivato rotto, cosa posso fare?",),
    },
    "return_policy": {
        "en": ("How many days do I have to return an item? I bought {n} shirts.",),
        "es": ("¿Cuántos días tengo para devolver un artículo? Compré {n} camisas.",),
        "de": ("Wie viele Tage habe ich Zeit, um einen Artikel zurückzugeben? Ich habe {n} Hemden gekauft.",),
    },
}

GREETINGS: dict[str, tuple[str, ...]] = {
    "en": ("", "Hi, ", "Hello! "), "es": ("", "Hola, ", "Buenas, "),
    "de": ("", "Hallo, ", "Guten Tag! "), "fr": ("", "Bonjour, ", "Salut, "),
    "it": ("", "Ciao, ", "Buongiorno, "), "pt": ("", "Olá, ", "Bom dia, "),
    "ru": ("", "Здравствуйте, ", "Привет! "),
}


@dataclass(frozen=True)
class Skeleton:
    """One template with its greeting; ``text(n)`` fills the number slot."""

    intent: str
    language: str
    pattern: str  # contains "{n}"

    def text(self, n: int) -> str:
        return self.pattern.format(n=n)


def skeletons() -> list[Skeleton]:
    out = []
    for intent, per_lang in TEMPLATES.items():
        for lang, patterns in per_lang.items():
            for pattern in patterns:
                for greeting in GREETINGS[lang]:
                    body = _lower_first(pattern) if greeting.endswith(", ") else pattern
                    out.append(Skeleton(intent, lang, greeting + body))
    return out


def _lower_first(text: str) -> str:
    """'¿Dónde ...' -> '¿dónde ...': the first letter, after any leading punctuation."""
    for k, ch in enumerate(text):
        if ch.isalpha():
            return text[:k] + ch.lower() + text[k + 1:]
    return text


def screen(candidates: Sequence[Skeleton], threads: int = 1,
           embedders: Sequence[str] = ()) -> tuple[list[Skeleton], int]:
    """Keep the skeletons that the real matcher (trained on the bundled KB, as ``serve``
    trains it) assigns to their intent without asking the model verifier; with
    ``embedders`` (support.matcher_embedder values), the matcher with each of them must.
    Returns (kept, rejected count). Loads the matcher(s) in this process: ~10-60 s each."""
    from dataclasses import replace

    from babeldesk.knowledge.embed import EmbedderKind
    from babeldesk.knowledge.kb import load_kb
    from babeldesk.knowledge.matcher import IntentMatcher, MatcherConfig

    base = MatcherConfig(threads=threads)
    configs = [replace(base, embedder=EmbedderKind(e)) for e in embedders] or [base]
    kb = load_kb(None)
    texts = [s.text(1234) for s in candidates]
    keep = [True] * len(candidates)
    for config in configs:
        matches = IntentMatcher.from_kb(kb, config).match_many(texts, [s.language for s in candidates])
        # the verifier is never asked: its band is empty by default
        for i, (s, m) in enumerate(zip(candidates, matches, strict=True)):
            if m.intent != s.intent:
                keep[i] = False
    kept = [s for s, k in zip(candidates, keep, strict=True) if k]
    return kept, len(candidates) - len(kept)


def stream(kept: Sequence[Skeleton], seed: int = 0) -> Iterator[str]:
    """Distinct messages, random skeletons: order numbers are 8 random digits, counts run
    2..99 once each per skeleton (a skeleton whose counts are used up drops out)."""
    if not kept:
        raise ValueError("no message templates to draw from")
    rng = random.Random(seed)
    numbers: dict[int, Iterator[int]] = {}
    for k, s in enumerate(kept):
        if "PM-{n}" in s.pattern:
            numbers[k] = iter(rng.sample(range(10_000_000, 100_000_000), 100_000))
        else:
            numbers[k] = iter(rng.sample(range(2, 100), 98))
    live = list(numbers)
    while live:
        k = rng.choice(live)
        n = next(numbers[k], None)
        if n is None:
            live.remove(k)
            continue
        yield kept[k].text(n)


def body(message: str) -> bytes:
    """The support API request body for one message (new session, language detected)."""
    return json.dumps({"message": message}, ensure_ascii=False).encode("utf-8")
