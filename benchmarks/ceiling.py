"""The HTTP ceiling for `benchmarks/serve.py`: a bare FastAPI endpoint returning a constant.

    uvicorn ceiling:app --app-dir benchmarks --workers 2 --http httptools

Served by the same uvicorn, protocol and worker count as ``driftloop serve``, so the
requests/s it reaches is what HTTP alone allows on this machine.
"""

from fastapi import FastAPI
from fastapi.responses import Response

ANSWER = b'{"predictions":[{"prediction":"no","probabilities":{"no":0.5,"yes":0.5}}]}'
app = FastAPI()


@app.post("/predict")
async def predict() -> Response:
    return Response(ANSWER, media_type="application/json")
