"""How the crowd did on the exam, read from Toloka when a labelling ends (`ExamOutcome`).

Read from the platform rather than added up by the wait: a resumed run's wait reviews only what
came in since it started, while the exam pool and the skill hold every answer and every value.
"""

from __future__ import annotations

from collections import Counter

from tasks.params import TolokaTarget
from tasks.stage import stage_task
from tasks.stages import ExamOutcome, LabellingIds
from tasks.toloka_api import make_client, search, skill_values


@stage_task(name="exam-outcome", toloka=True, per_flow_run=True)
def exam_outcome_task(target: TolokaTarget, ids: LabellingIds, min_skill: float) -> ExamOutcome:
    """Exam answers accepted and rejected (one pass over the exam pool's search), and the workers
    holding the run's skill, above the bar or not."""
    client = make_client(target)
    values = skill_values(client, ids.skill)
    query = {"pool_id": ids.exam_pool, "status": "ACCEPTED,REJECTED"}
    statuses = Counter(search(client, "/v1/assignments", query, lambda item: item["status"]))
    return ExamOutcome(
        accepted=statuses["ACCEPTED"],
        rejected=statuses["REJECTED"],
        takers=len(values),
        qualified=sum(value >= min_skill for value in values.values()),
        min_skill=float(min_skill),
    )
