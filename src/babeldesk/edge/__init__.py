"""The HTTP edge shared by every app (worker, gateway): the middleware stack around every
route (``stack``), who may call what (``auth``), abuse limits (``ratelimit``), errors ->
JSON (``errors``), bounded bodies (``bodies``), clients that hang up (``disconnect``),
and an app's life: phase, heap freeze, draining server (``lifecycle``)."""
