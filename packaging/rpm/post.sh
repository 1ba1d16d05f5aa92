# drover %post ($1: 1 on install, 2 or more on upgrade).
# /etc/drover (0700) is the package's own directory (drover.spec, %files); what is in it is
# the operator's (the userdata writes it), and the package ships only an example.
if [ "$1" -eq 1 ] && command -v systemctl >/dev/null 2>&1; then
    # Enabled, never started here: an image bake must not register the bake VM.
    systemctl --no-reload enable drover.service >/dev/null 2>&1 || :
fi
