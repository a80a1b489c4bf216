"""The shared in-context-classification layout and measures (lab/tasks/classification.py), on
hand-built sequences, attention patterns and logits."""
import jax.numpy as jnp
import numpy as np
import pytest

from lab.tasks.classification import (ClassBatch, ClassificationTask, build_sequence, context_label_measures,
                                      item_label_attention, query_label_attention, query_loss_and_accuracy)

N, L = 3, 4          # 3 pairs, 4 labels: T = 7, item id = 4


def _batch() -> ClassBatch:
    items = jnp.arange(N * 2, dtype=jnp.float32).reshape(N, 2) + 1
    row = build_sequence(items, jnp.array([2, 0, 2]), jnp.array([7, 1, 7]), jnp.array([9.0, 9.0]),
                         query_label=2, query_class=7, n_labels=L)
    return ClassBatch(*(x[None] for x in row))


def test_sequence_layout_by_hand():
    b = _batch()
    np.testing.assert_array_equal(b.tokens[0], [4, 2, 4, 0, 4, 2, 4])       # x ℓ x ℓ x ℓ x_q
    np.testing.assert_array_equal(b.features[0, :, 0], [1, 0, 3, 0, 5, 0, 9])  # items at even positions
    assert b.query_label[0] == 2 and b.query_class[0] == 7


def _pattern(query_row, label_row=None) -> jnp.ndarray:
    """(1, 1, 7, 7): row 6 (the query) is `query_row`; label rows attend to `label_row` offsets."""
    p = np.eye(7)
    p[6] = query_row
    if label_row is not None:
        for i in (1, 3, 5):
            p[i] = 0
            p[i, i - 1] = label_row
            p[i, i] = 1 - label_row
    return jnp.asarray(p)[None, None]


def test_query_label_attention_by_hand():
    b = _batch()   # labels at positions 1, 3, 5 are 2, 0, 2; the query's label is 2 and class 7
    # ideal induction head: half on each correct label token
    tila, tla, strength = query_label_attention(_pattern([0, .5, 0, 0, 0, .5, 0]), b)
    assert float(tila[0]) == pytest.approx(1.0) and float(tla[0]) == pytest.approx(1.0)
    assert float(strength[0]) == pytest.approx(1.0)
    # uniform over the 7 positions: correct labels 2/7, incorrect 1/7, all labels 3/7
    tila, tla, strength = query_label_attention(_pattern(np.full(7, 1 / 7)), b)
    assert float(tila[0]) == pytest.approx(2 / 7) and float(tla[0]) == pytest.approx(3 / 7)
    assert float(strength[0]) == pytest.approx(1 / 7)
    # all on the wrong label: strength -1
    _, _, strength = query_label_attention(_pattern([0, 0, 0, 1, 0, 0, 0]), b)
    assert float(strength[0]) == pytest.approx(-1.0)


def test_item_label_attention_by_hand():
    assert float(item_label_attention(_pattern(np.full(7, 1 / 7), label_row=0.75))[0]) == pytest.approx(0.75)
    assert float(item_label_attention(_pattern(np.full(7, 1 / 7), label_row=0.0))[0]) == pytest.approx(0.0)


def test_query_scores_and_context_label_measures_by_hand():
    b = _batch()
    logits = jnp.zeros((1, 7, L)).at[0, -1].set(jnp.log(jnp.array([0.1, 0.2, 0.6, 0.1])))
    loss, acc = query_loss_and_accuracy(logits, b)
    assert float(loss) == pytest.approx(-np.log(0.6), rel=1e-5) and float(acc) == 1.0
    cla, mass = context_label_measures(logits, b, L)      # labels 0 and 2 are in the context
    assert float(cla) == 1.0 and float(mass) == pytest.approx(0.7, rel=1e-5)
    wrong = jnp.zeros((1, 7, L)).at[0, -1, 3].set(5.0)    # predicts label 3, absent from the context
    cla, _ = context_label_measures(wrong, b, L)
    assert float(cla) == 0.0


def test_ideal_induction_attention_targets_the_correct_labels():
    class _T(ClassificationTask):
        pass
    weights, rows = _T().induction_attention(_batch())
    expected = np.zeros(7)
    expected[[1, 5]] = 0.5
    np.testing.assert_allclose(weights[0, -1], expected)
    np.testing.assert_array_equal(rows[0], [False] * 6 + [True])
    assert float(weights[0, :-1].sum()) == 0.0
