# On erase (not on upgrade): stop and disable the services.
if [ "$1" -eq 0 ] && [ -d /run/systemd/system ]; then
    systemctl --no-reload disable --now orchard.service orchard-agent.service >/dev/null 2>&1 || :
fi
exit 0
