"""Golden tests for medreason.extract.extract_choice: realistic outputs of a base instruct model (no
<think>, free prose, markdown) and of the SFT adapter (<think> ... </think> then the answer, or a <think>
block left open by the token budget), on lettered and yes/no/maybe options."""

import pytest

from medreason.mcq import extract_choice
from medreason.template import answer_region

COARCTATION = {
    "A": "Tetralogy of Fallot",
    "B": "Ebstein anomaly",
    "C": "Transposition of the great arteries",
    "D": "Bicuspid aortic valve",
}
TAKOTSUBO = {
    "A": "Vasospastic (Prinzmetal) angina",
    "B": "Acute viral myocarditis",
    "C": "Stress-induced (takotsubo) cardiomyopathy",
    "D": "Anterior STEMI from LAD occlusion",
    "E": "Aortic dissection",
}
HYPER = {"A": "Hypertension", "B": "Hypertension with hypokalemia", "C": "Hypotension", "D": "Hyperkalemia"}
YNM = {"yes": "yes", "no": "no", "maybe": "maybe"}

GOLDEN = [
    # --- base-model-like outputs: no <think>, prose, markdown
    (
        "base: 'The answer is (D).' after prose",
        "Coarctation of the aorta is classically associated with a bicuspid aortic valve, which is present in "
        "up to half of patients.\n\nThe answer is (D).",
        COARCTATION,
        "D",
    ),
    (
        "base: 'Answer: C' line",
        "The patient has apical ballooning after emotional stress with clean coronaries.\nAnswer: C",
        TAKOTSUBO,
        "C",
    ),
    (
        "base: bold letter alone on the last line",
        "Let's look at each option.\n\nOption A: Tetralogy of Fallot is cyanotic.\nOption B: Ebstein anomaly is "
        "linked to lithium.\n\n**D**",
        COARCTATION,
        "D",
    ),
    (
        "base: final answer bold with the text",
        "Based on the findings, the final answer is: **D. Bicuspid aortic valve**",
        COARCTATION,
        "D",
    ),
    (
        "base: walks every option, then the answer",
        "A. Tetralogy of Fallot - no, this presents with cyanosis.\nB. Ebstein anomaly - no.\nC. Transposition - no.\n"
        "D. Bicuspid aortic valve - yes.\n\nThe correct answer is D.",
        COARCTATION,
        "D",
    ),
    (
        "base: answer given as the option's text, lower case",
        "The most likely diagnosis is stress-induced (takotsubo) cardiomyopathy, given the apical ballooning.",
        TAKOTSUBO,
        "C",
    ),
    (
        "base: 'the answer is a <option text>' (article, not option A)",
        "So the answer is a bicuspid aortic valve.",
        COARCTATION,
        "D",
    ),
    (
        "base: lower-case letter in brackets",
        "i think the correct option is (c) because the coronaries are normal.",
        TAKOTSUBO,
        "C",
    ),
    ("base: 'C is correct'", "C is correct. Takotsubo shows apical ballooning.", TAKOTSUBO, "C"),
    (
        "base: final line is only the option text",
        "Considering the stress trigger and normal angiography:\n\nStress-induced (takotsubo) cardiomyopathy",
        TAKOTSUBO,
        "C",
    ),
    ("base: hedges between two letters", "The answer is C or D, depending on the angiogram.", TAKOTSUBO, None),
    (
        "base: names two options' text without choosing",
        "This could be acute viral myocarditis or aortic dissection; more tests are needed.",
        TAKOTSUBO,
        None,
    ),
    (
        "base: repeats the instruction placeholder only",
        'Think it through, then end with "The answer is X".',
        COARCTATION,
        None,
    ),
    ("base: a letter outside the options", "The answer is E.", COARCTATION, None),
    (
        "base: two explicit answers that disagree",
        "The answer is B. Actually, on reflection, the answer is D.",
        COARCTATION,
        None,
    ),
    (
        "base: the longest matching option text wins",
        "Answer: hypertension with hypokalemia, as in primary aldosteronism.",
        HYPER,
        "B",
    ),
    ("base: 'A patient ...' is not option A", "A patient like this needs an echocardiogram.", COARCTATION, None),
    # --- adapter-like outputs: <think> ... </think> then the answer
    (
        "adapter: think closed, 'The answer is (D)'",
        "<think>\nRib notching and delayed femoral pulses point to coarctation. Option A causes cyanosis; "
        "option D, a bicuspid aortic valve, is the classic association.\n</think>\n\nThe answer is (D). "
        "Coarctation is most often associated with a bicuspid aortic valve.",
        COARCTATION,
        "D",
    ),
    (
        "adapter: think closed, option text only",
        "<think>\nEmotional trigger, apical ballooning, no obstruction.\n</think>\n\n"
        "Stress-induced (takotsubo) cardiomyopathy.",
        TAKOTSUBO,
        "C",
    ),
    (
        "adapter: think closed, 'C. <text>' first line then explanation",
        "<think>\nThe angiogram is clean, so not STEMI (D).\n</think>\n\nC. Stress-induced (takotsubo) "
        "cardiomyopathy\n\nIt mimics an infarction but resolves.",
        TAKOTSUBO,
        "C",
    ),
    (
        "adapter: answer after </think> wins over letters debated inside",
        "<think>\nCould it be B? Answer: B seems unlikely with no fever. Maybe D? No, the arteries are clean.\n"
        "</think>\n\nAnswer: C",
        TAKOTSUBO,
        "C",
    ),
    (
        "adapter: think left open by the budget, with an explicit statement",
        "<think>\nDelayed femoral pulses and rib notching: coarctation. The associated lesion is a bicuspid "
        "valve, so the answer is D. Let me also check Turner syndrome",
        COARCTATION,
        "D",
    ),
    (
        "adapter: think left open, only options discussed",
        "<think>\nOption A is cyanotic. Option B relates to lithium. Option D, a bicuspid aortic valve, fits "
        "best but let me verify with",
        COARCTATION,
        None,
    ),
    (
        "adapter: after </think> only an explanation; the reasoning concluded",
        "<think>\nClean coronaries plus ballooning: the answer is C.\n</think>\n\nThis condition is triggered "
        "by a surge of catecholamines and usually recovers within weeks.",
        TAKOTSUBO,
        "C",
    ),
    (
        "adapter: markdown heading and bold after </think>",
        "<think>\nPulses delayed in the legs.\n</think>\n\n## Answer\n**D. Bicuspid aortic valve**",
        COARCTATION,
        "D",
    ),
    (
        "adapter: huatuo template",
        "## Thinking\n\nThe coronaries are clear.\n\n## Final Response\n\nThe answer is C.",
        TAKOTSUBO,
        "C",
    ),
    (
        "adapter: five options, E chosen",
        "<think>\nTearing pain radiating to the back, unequal arm pressures.\n</think>\n\nFinal answer: E",
        TAKOTSUBO,
        "E",
    ),
    (
        "adapter: SFT-style 'The most likely diagnosis is <text>, ...' after </think>",
        "<think>\nTearing pain, unequal arm pressures.\n</think>\n\nThe most likely diagnosis is acute aortic dissection, "
        "given the tearing pain radiating to the back; myocarditis would not explain it.",
        TAKOTSUBO,
        "E",
    ),
    (
        "adapter: 'The most appropriate next step is ...' names one option in its clause",
        "The most appropriate next step is urgent pericardiocentesis to relieve the tamponade, not more fluids.",
        {"A": "Intravenous fluids", "B": "Pericardiocentesis", "C": "Chest tube", "D": "Thoracotomy"},
        "B",
    ),
    (
        "adapter: the statement's clause names two options",
        "The most likely diagnosis is acute viral myocarditis or aortic dissection; an echo will tell.",
        TAKOTSUBO,
        None,
    ),
    # --- yes / no / maybe (label == text)
    (
        "ynm base: starts with 'No.'",
        "No. The trial found no difference in mortality between the groups (p = 0.41).",
        YNM,
        "no",
    ),
    (
        "ynm base: 'The answer is: maybe'",
        "The evidence is mixed and the sample small, so the answer is: maybe.",
        YNM,
        "maybe",
    ),
    (
        "ynm adapter: think then 'Answer: yes'",
        "<think>\nThe abstract reports a significant reduction (p < 0.01), no evidence against it.\n</think>\n\n"
        "Answer: Yes",
        YNM,
        "yes",
    ),
    (
        "ynm: 'no' as an ordinary word is not a choice",
        "There is no randomised evidence here, and the cohort is small.",
        YNM,
        None,
    ),
    (
        "ynm: 'no' in the clause after 'answer is' is not a label there",
        "The correct answer is no longer in doubt after the trial, which showed a clear benefit.",
        YNM,
        None,
    ),
    ("ynm: think left open", "<think>\nThe study says yes for adults, but no data for children, so", YNM, None),
    ("ynm: final line 'Yes'", "<think>\nsignificant benefit\n</think>\n\nYes", YNM, "yes"),
]


@pytest.mark.parametrize("text, options, expected", [g[1:] for g in GOLDEN], ids=[g[0] for g in GOLDEN])
def test_golden(text, options, expected):
    assert extract_choice(text, options) == expected


def test_golden_set_is_large_and_covers_both_sources():
    assert len(GOLDEN) + len(REAL_BASE) >= 20
    assert sum(g[0].startswith("adapter") for g in GOLDEN) >= 8
    assert sum(g[0].startswith("base") for g in GOLDEN) >= 8
    assert {g[3] for g in GOLDEN} >= {None, "A", "C", "D", "E", "yes", "no", "maybe"} - {"A"}


@pytest.mark.parametrize("text", ["", None, "   ", "<think>", "</think>"])
def test_empty_outputs(text):
    assert extract_choice(text, COARCTATION) is None


def test_label_is_always_a_key_of_options():
    options = {"A": "x-ray", "B": "CT", "C": "MRI"}
    for text in ["Answer: c", "ANSWER: C", "the answer is (c).", "MRI", "**mri**", "Final answer - C)"]:
        assert extract_choice(text, options) == "C", text


def test_answer_region():
    assert answer_region("<think>a</think>b") == ("b", True)
    assert answer_region("<think>a</think>b</think>c") == ("c", True)
    assert answer_region("<think>open") == ("\nopen", False)
    assert answer_region("plain") == ("plain", True)


# Real greedy outputs of SmolLM2-135M-Instruct (the base model) on bundled heldout items, in the prompt of
# medreason.mcq.prompt_messages, 192 new tokens (medreason.answers.answers_for); the first is truncated.
REAL_BASE = [
    (
        "mcq-014",
        {
            "A": "Phosphodiesterase-5 inhibition",
            "B": "Prostacyclin receptor agonism",
            "C": "Endothelin receptor antagonism",
            "D": "Soluble guanylate cyclase stimulation",
        },
        "A. Phosphodiesterase-5 inhibition\n\nPhosphodiesterase-5 is a phosphodiesterase enzyme that plays a role in the regulation of vascular smooth muscle contraction. It is a serine/threonine kinase that is involved in the regulation of vascular smooth muscle contraction. The mechanism of action of this enzyme is to inhibit the enzyme that regulates vascular smooth muscle contraction, which is the enzyme that is responsible for the regulation of vascular smooth muscle contraction.\n\nThe drug is a phosphodiesterase inhibitor, which is a class of medications that work by inhibiting the enzyme that regulates vascular smooth muscle contraction. The drug is a class of medications called antihypertensives, which are used to treat high blood pressure.\n\nThe mechanism of action of this drug is to inhibit the enzyme that regulates vascular smooth muscle contraction, which is a serine/threonine kinase. This is a reversible mechanism, and the",
        "A",
    ),
    (
        "mcq-041",
        {
            "A": "Low serum 17-hydroxyprogesterone",
            "B": "Elevated serum 17-hydroxyprogesterone",
            "C": "Elevated serum aldosterone",
            "D": "Suppressed plasma ACTH",
        },
        "A. Low serum 17-hydroxyprogesterone\n\nThe answer is A. Low serum 17-hydroxyprogesterone.",
        "A",
    ),
    (
        "mcq-108",
        {
            "A": "Lateral rectus muscle",
            "B": "Superior oblique muscle",
            "C": "Inferior rectus muscle",
            "D": "Optic nerve",
        },
        "The answer is A.\n\nThe correct answer is A.\n\nThe lateral rectus muscle is the most likely structure to be entrapped in this scenario. The CT image shows a fracture of the orbital floor, which is a critical structure for the right eye. The lateral rectus muscle is responsible for the right eye's ability to move its upper lip and nose.",
        "A",
    ),
    (
        "mcq-229",
        {
            "A": "Topical clotrimazole cream",
            "B": "Oral terbinafine",
            "C": "Oral cephalexin",
            "D": "Topical hydrocortisone",
        },
        "A. Topical clotrimazole cream\n\nThe correct answer is D. Topical hydrocortisone.",
        "D",
    ),
    (
        "mcq-237",
        {
            "A": "Left inferior frontal gyrus",
            "B": "Left superior temporal gyrus",
            "C": "Left arcuate fasciculus alone",
            "D": "Right inferior parietal lobule",
        },
        "The lesion most likely involves the left inferior frontal gyrus. This region is responsible for the left hemisphere's primary function of motor control and language processing. The lesion can affect any of these regions, but the most likely location is the left inferior frontal gyrus.",
        "A",
    ),
    (
        "mcq-279",
        {
            "A": "CT-guided percutaneous drainage of the abscess",
            "B": "Emergency sigmoid colectomy with end colostomy",
            "C": "Colonoscopy during the acute episode",
            "D": "Oral antibiotics as an outpatient",
        },
        "The most appropriate management for this patient is a combination of a combination of a CT-guided percutaneous drainage of the abscess and a colonoscopy during the acute episode. This is a high-risk procedure that requires careful planning and execution.\n\nD. The answer is X.",
        None,
    ),
    (
        "mcq-287",
        {
            "A": "Immature renal tubular secretion of penicillins",
            "B": "Excess hepatic cytochrome P450 activity",
            "C": "Immature hepatic UDP-glucuronosyltransferase activity",
            "D": "Increased plasma protein binding of the drug",
        },
        "The answer is A. Immature renal tubular secretion of penicillins.",
        "A",
    ),
    (
        "mcq-298",
        {"A": "Hemorrhagic shock", "B": "Cardiogenic shock", "C": "Septic shock", "D": "Neurogenic shock"},
        "A. Hemorrhagic shock\n\nThe correct answer is A. Hemorrhagic shock.",
        "A",
    ),
]


@pytest.mark.parametrize("options, text, expected", [r[1:] for r in REAL_BASE], ids=[r[0] for r in REAL_BASE])
def test_real_base_model_outputs(options, text, expected):
    assert extract_choice(text, options) == expected
