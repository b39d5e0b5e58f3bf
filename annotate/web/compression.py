"""A campaign's optimised models: each optimize run's versions beside their source, a table and plots; admins start a run."""
from __future__ import annotations

from django import forms
from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from annotate import access
from annotate.core.plots import bar_panels
from annotate.jobs import engine
from annotate.models import Membership
from annotate.runs.compression import METHODS, comparisons
from annotate.web.run_forms import generatable_models

ADMIN = (Membership.Role.ADMIN,)
FIGURE_TITLES = {
    "size_mb": "size on disk (MB)",
    "load_s": "load time (s)",
    "tokens_per_s": "decoding tokens/s (same work for each)",
    "perplexity": "perplexity on the source's samples",
    "reward": "mean reward-model score",
    "agreement": "pairs ordered as the source does",
}


class OptimizeForm(forms.Form):
    model = forms.ChoiceField(help_text="A policy or base model.")
    methods = forms.MultipleChoiceField(choices=[(m, m) for m in METHODS], widget=forms.CheckboxSelectMultiple, initial=["int8", "prune"],
                                        help_text="merge: fold the LoRA adapter in; int8: CPU quantisation; prune: magnitude pruning; bnb8/bnb4: bitsandbytes on a GPU.")
    sparsity = forms.FloatField(initial=0.5, help_text="Share pruned, strictly between 0 and 1.")
    structured = forms.BooleanField(required=False, label="Structured (whole MLP channels)")
    limit = forms.IntegerField(min_value=1, max_value=1000, initial=16, label="Prompts to measure on")

    def __init__(self, *args, campaign, **kwargs):
        super().__init__(*args, **kwargs)
        model = self.fields["model"]
        assert isinstance(model, forms.ChoiceField)
        model.choices = [(n, n) for n in generatable_models(campaign)]

    def params(self) -> dict:
        return dict(self.cleaned_data)


@login_required
@require_GET
def optimized(request, slug):
    campaign = access.campaign_for(request.user, slug, access.READING_ROLES)
    form = OptimizeForm(campaign=campaign) if access.may_start(campaign, "optimize") else None
    return render(request, "annotate/optimize.html", _context(campaign, form))


@login_required
@require_POST
def start_optimize(request, slug):
    campaign = access.campaign_for(request.user, slug, access.roles_to_start("optimize"))
    form = OptimizeForm(request.POST, campaign=campaign)
    if form.is_valid():
        try:
            run = engine.start_run("optimize", campaign=campaign, params=form.params(), user=request.user)
            return redirect("run", run_id=run.pk)
        except engine.InvalidParams as exc:
            form.add_error(exc.field if exc.field in form.fields else None, exc.message)
    return render(request, "annotate/optimize.html", _context(campaign, form), status=422)


def _context(campaign, form) -> dict:
    tables = comparisons(campaign.runs.all())
    for table in tables:
        labels = [row["model"] if row["method"] == "source" else row["model"].removeprefix(table["source"] + "-") for row in table["rows"]]
        table["plots"] = bar_panels(labels, {title: [row.get(key) for row in table["rows"]] for key, title in FIGURE_TITLES.items()})
    return {"campaign": campaign, "comparisons": tables, "form": form, "titles": FIGURE_TITLES}
