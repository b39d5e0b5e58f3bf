"""Forms of the campaign admin pages. They shape input; the service functions (campaigns, labelers,
file_imports, quality) check it again and have the last word."""
from __future__ import annotations

from django import forms
from django.urls import reverse

from annotate.campaigns.setup import InvalidSettings, validate_criteria
from annotate.models import Campaign, Membership


def criteria_to_text(criteria: list[dict]) -> str:
    return "\n".join(f"{c['name']} | {c.get('label') or c['name']} | {c['min']} | {c['max']}" for c in criteria)


def criteria_from_text(text: str) -> list[dict]:
    """One criterion a line: `name | Label | min | max` (the label may be left empty)."""
    criteria = []
    for number, line in enumerate((text or "").splitlines(), 1):
        if not line.strip():
            continue
        parts = [p.strip() for p in line.split("|")]
        if len(parts) != 4 or not parts[2].lstrip("-").isdigit() or not parts[3].lstrip("-").isdigit():
            raise forms.ValidationError(f"line {number}: write name | Label | min | max, for example: helpful | Helpfulness | 1 | 7")
        criteria.append({"name": parts[0], "label": parts[1] or parts[0], "min": int(parts[2]), "max": int(parts[3])})
    try:
        return validate_criteria(criteria)
    except InvalidSettings as exc:
        raise forms.ValidationError(exc.message) from None


class CampaignForm(forms.Form):
    name = forms.CharField(max_length=200)
    slug = forms.SlugField(max_length=80, help_text="In the campaign's address; fixed once created.")
    task_type = forms.ChoiceField(choices=Campaign.TaskType.choices)
    responses_per_task = forms.IntegerField(min_value=2, max_value=8, initial=2, label="Responses per task (k)")
    overlap = forms.IntegerField(min_value=1, max_value=100, initial=1, help_text="Judgements wanted per task.")
    lease_seconds = forms.IntegerField(min_value=10, max_value=7 * 24 * 3600, initial=600, label="Lease (seconds)", help_text="A task not submitted within this time goes back to the pool.")
    gold_percent = forms.FloatField(min_value=0, max_value=100, initial=0, label="Gold tasks (% of each stream)")
    gold_min_accuracy_percent = forms.FloatField(min_value=0, max_value=100, initial=0, label="Pause under gold accuracy (%)", help_text="0: never pause.")
    gold_min_answered = forms.IntegerField(min_value=1, max_value=1000, initial=5, label="Gold answers before the bar applies")
    criteria = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 3, "placeholder": "helpful | Helpfulness | 1 | 7"}),
        help_text="Optional ratings per response, one a line: name | Label | min | max (scales within 0..10).",
    )
    instructions = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 10}), help_text="Markdown, shown to labelers.")
    markdown_text = forms.BooleanField(
        required=False, initial=True, label="Show prompts and responses as Markdown", help_text="Code, tables and lists rendered (sanitised); off: plain text."
    )

    def __init__(self, *args, campaign: Campaign | None = None, **kwargs):
        self.campaign = campaign
        if campaign is not None and "initial" not in kwargs:
            kwargs["initial"] = {
                **{f: getattr(campaign, f) for f in ("name", "slug", "task_type", "responses_per_task", "overlap", "lease_seconds", "gold_min_answered", "instructions", "markdown_text")},
                "gold_percent": round(campaign.gold_rate * 100, 2),
                "gold_min_accuracy_percent": round(campaign.gold_min_accuracy * 100, 2),
                "criteria": criteria_to_text(campaign.criteria),
            }
        super().__init__(*args, **kwargs)
        self.fields["instructions"].widget.attrs.update({
            "hx-post": reverse("campaign-preview"), "hx-trigger": "input changed delay:300ms", "hx-target": "#instructions-preview",
        })
        if campaign is not None:
            self.fields["slug"].disabled = True
            if campaign.tasks.exists():
                for name in ("task_type", "responses_per_task"):
                    self.fields[name].disabled = True
                    self.fields[name].help_text = "Fixed once tasks exist."

    def clean_slug(self):
        slug = self.cleaned_data["slug"]
        if self.campaign is None and Campaign.objects.filter(slug=slug).exists():
            raise forms.ValidationError("a campaign with this slug already exists.")
        return slug

    def clean_criteria(self):
        return criteria_from_text(self.cleaned_data.get("criteria", ""))

    def clean(self):
        data = super().clean()
        assert data is not None  # Form.clean returns cleaned_data
        if data.get("task_type") == Campaign.TaskType.PAIRWISE and data.get("responses_per_task") not in (None, 2):
            self.add_error("responses_per_task", "a pairwise campaign has exactly 2 responses per task.")
        return data

    def settings(self) -> dict:
        """Keyword arguments for campaigns.create_campaign / update_campaign."""
        data = self.cleaned_data
        fields = {k: data[k] for k in ("name", "task_type", "responses_per_task", "overlap", "lease_seconds", "gold_min_answered", "instructions", "criteria", "markdown_text")}
        fields["gold_rate"] = data["gold_percent"] / 100
        fields["gold_min_accuracy"] = data["gold_min_accuracy_percent"] / 100
        if self.campaign is None:
            fields["slug"] = data["slug"]
        return fields


class ImportForm(forms.Form):
    file = forms.FileField(help_text="CSV, JSONL, JSON, Parquet, a zipped datasets folder, or a Label Studio export.")
    kind = forms.ChoiceField(
        choices=[("prompts", "Prompts"), ("responses", "Responses to prompts already here"), ("preferences", "Prompts with their responses (TRL, Label Studio)")],
        initial="preferences",
    )
    on_duplicate = forms.ChoiceField(choices=[("error", "Reject the file"), ("skip", "Skip them")], initial="error", label="Prompts already in the campaign")
    model = forms.CharField(required=False, max_length=200, label="Model name for the whole file", help_text="Used where no column names the model.")
    create_models = forms.BooleanField(required=False, label="Register model names that are new", help_text="Off: an unknown model name is an error (catches typos).")
    split = forms.CharField(required=False, max_length=100, help_text="For a datasets folder with several splits (default: train).")


class AddLabelerForm(forms.Form):
    username = forms.CharField(max_length=150, help_text="Someone from a campaign you run is added; a free name creates the account with a generated password.")
    role = forms.ChoiceField(choices=Membership.Role.choices, initial=Membership.Role.LABELER)
    email = forms.EmailField(required=False, help_text="Only for a new account.")
