# The daemon's system user, with no login shell.
getent group orchard >/dev/null || groupadd -r orchard
getent passwd orchard >/dev/null || \
    useradd -r -g orchard -d /var/lib/orchard -M -s /sbin/nologin -c "Orchard daemon" orchard
# Access to the libvirt and docker sockets, where those are installed.
for group in libvirt docker; do
    if getent group "$group" >/dev/null; then
        usermod -a -G "$group" orchard || :
    fi
done
exit 0
