from django import forms


class LoginForm(forms.Form):
    email = forms.EmailField(widget=forms.EmailInput(attrs={"autocomplete": "username", "autofocus": True}))
    password = forms.CharField(widget=forms.PasswordInput(attrs={"autocomplete": "current-password"}))


class TotpForm(forms.Form):
    code = forms.CharField(
        label="Six-digit code",
        max_length=7,
        widget=forms.TextInput(attrs={"autocomplete": "one-time-code", "inputmode": "numeric", "autofocus": True}),
    )


class TokenIssueForm(forms.Form):
    """Issue an API token to a sponsor user; the service checks the role and organisation again."""

    user = forms.ModelChoiceField(queryset=None, label="Sponsor user", empty_label="Choose a sponsor user")
    name = forms.CharField(max_length=100, help_text="What the token is for, e.g. the sponsor's CI pipeline.")
    days_valid = forms.IntegerField(min_value=1, max_value=365, initial=90, label="Valid for (days)")
    scopes = forms.MultipleChoiceField(widget=forms.CheckboxSelectMultiple, initial=None)

    def __init__(self, *args, **kwargs):
        from portal.models import ApiToken, Role, User

        super().__init__(*args, **kwargs)
        self.fields["user"].queryset = (User.objects.filter(role_assignments__role=Role.SPONSOR, is_active=True,
                                                            organisation__isnull=False)
                                        .select_related("organisation").order_by("organisation__name", "email"))
        self.fields["user"].label_from_instance = lambda u: f"{u.full_name} <{u.email}> · {u.organisation.name}"
        self.fields["scopes"].choices = ApiToken.Scope.choices
        self.fields["scopes"].initial = list(ApiToken.Scope.values)
