"""The JSON shapes of the API (for validation where FastAPI does it, and the OpenAPI document)."""

from __future__ import annotations

from pydantic import BaseModel, Field, TypeAdapter


class ModelRef(BaseModel):
    name: str
    version: str


class Prediction(BaseModel):
    prediction: str | float = Field(description="Class label, or the predicted value")
    probabilities: dict[str, float] | None = Field(
        None, description="Probability of each class (classifiers)"
    )
    flags: list[str] | None = Field(
        None, description="Remarks on an accepted record (an unknown category, when flagged)"
    )


class PredictResponse(BaseModel):
    request_id: str
    model: ModelRef
    predictions: list[Prediction]


class FeedbackItem(BaseModel):
    request_id: str = Field(min_length=1, max_length=128)
    record: int = Field(
        0, ge=0, le=2**31 - 1, description="Which record of the request (0 for one record)"
    )
    label: str | int | float | bool = Field(description="The true value of the target")
    correction: bool = Field(
        False,
        description="Replace the label already given for this record (needs an admin token); "
        "without it, the first label of a record is the one monitoring uses",
    )


class FeedbackResponse(BaseModel):
    accepted: int


FEEDBACK_LIST: TypeAdapter[list[FeedbackItem]] = TypeAdapter(list[FeedbackItem])
