# drover %post ($1: 1 on install, 2 or more on upgrade).
# /etc/drover holds the config and the secret files cloud-init fetches: owner only. What is
# in it is the operator's (the userdata writes it); the package ships only an example.
mkdir -p /etc/drover
chmod 0700 /etc/drover
if [ "$1" -eq 1 ] && command -v systemctl >/dev/null 2>&1; then
    # Enabled, never started here: an image bake must not register the bake VM.
    systemctl --no-reload enable drover.service >/dev/null 2>&1 || :
fi
