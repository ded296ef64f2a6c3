"""The engine benchmark's workload: the same chat requests and arrival times for every setting.

Requests are short customer-support questions in 22 languages (40 lines, cycled to the
requested count), each sent with one fixed system message, greedy, 64 new tokens. Arrival
times are seeded, so every setting of a model sees the same Poisson schedule.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

MAX_TOKENS = 64  # new tokens per request (there is no ignore_eos: EOS may stop earlier)
SYSTEM = "You are a helpful customer-support assistant for an online shop. Answer briefly."
SEED = 20261124

# (language, question): 40 short support questions, two per language (one for el uk he th).
QUESTIONS: tuple[tuple[str, str], ...] = (
    ("en", "Where is my order? I ordered five days ago and it has not arrived."),
    ("en", "How do I return a jacket that is too small?"),
    ("zh", "我的订单什么时候发货？"),
    ("zh", "我想退货，请问怎么办理退款？"),
    ("es", "¿Cuánto cuesta el envío a Madrid?"),
    ("es", "Mi pago fue rechazado, ¿qué puedo hacer?"),
    ("fr", "Comment puis-je changer l'adresse de livraison de ma commande ?"),
    ("fr", "Quand vais-je recevoir mon remboursement ?"),
    ("de", "Wie kann ich meine Bestellung stornieren?"),
    ("de", "Das Paket ist beschädigt angekommen. Was soll ich tun?"),
    ("pt", "Vocês entregam no Brasil? Quanto tempo demora?"),
    ("pt", "Esqueci minha senha, como posso redefini-la?"),
    ("it", "Posso cambiare la taglia delle scarpe che ho ordinato?"),
    ("it", "Quali metodi di pagamento accettate?"),
    ("ja", "注文した商品がまだ届きません。確認してもらえますか？"),
    ("ja", "領収書を再発行してもらえますか？"),
    ("ko", "배송은 보통 며칠 걸리나요?"),
    ("ko", "쿠폰 코드가 적용되지 않아요. 어떻게 해야 하나요?"),
    ("ar", "أين طلبي؟ لم يصل بعد."),
    ("ar", "كيف يمكنني إرجاع منتج معيب؟"),
    ("ru", "Как отменить подписку?"),
    ("ru", "В посылке не хватает одного товара. Что делать?"),
    ("hi", "मेरा ऑर्डर कब तक पहुंचेगा?"),
    ("hi", "मैं अपना ईमेल पता कैसे बदलूं?"),
    ("nl", "Hoe lang duurt de levering naar Amsterdam?"),
    ("nl", "Kan ik mijn bestelling nog wijzigen?"),
    ("pl", "Jak mogę zwrócić zamówienie?"),
    ("pl", "Czy mogę zapłacić przy odbiorze?"),
    ("tr", "Siparişim neden gecikti?"),
    ("tr", "İade süreci kaç gün sürüyor?"),
    ("vi", "Làm thế nào để theo dõi đơn hàng của tôi?"),
    ("vi", "Tôi có thể đổi sản phẩm không?"),
    ("id", "Berapa lama pengembalian dana diproses?"),
    ("id", "Apakah ada garansi untuk produk ini?"),
    ("sv", "Hur kontaktar jag kundtjänst?"),
    ("sv", "Vilka är era öppettider?"),
    ("el", "Πώς μπορώ να ακυρώσω την παραγγελία μου;"),
    ("uk", "Як змінити спосіб оплати?"),
    ("he", "איך אני מוחק את החשבון שלי?"),
    ("th", "ค่าจัดส่งไปต่างประเทศเท่าไหร่คะ"),
)


@dataclass(frozen=True, slots=True)
class BenchRequest:
    index: int  # position in the workload, 0-based
    language: str  # ISO 639-1 of the question
    question: str

    @property
    def messages(self) -> list[dict[str, str]]:
        return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": self.question}]


def requests(n: int) -> list[BenchRequest]:
    """The first ``n`` requests: the questions cycled in a fixed order."""
    return [BenchRequest(i, *QUESTIONS[i % len(QUESTIONS)]) for i in range(n)]


def poisson_arrivals(n: int, rate: float, seed: int = SEED) -> list[float]:
    """Arrival offsets (seconds from start, non-decreasing) of a Poisson process at ``rate``/s."""
    if rate <= 0:
        raise ValueError("rate must be > 0")
    rng = random.Random(seed)
    t, out = 0.0, []
    for _ in range(n):
        t += rng.expovariate(rate)
        out.append(t)
    return out
