# --- body of the opsbake hand-off (the header above sets the parameters) ---
# Runs as root, in one go, from a file uploaded before it runs, so that nothing
# needs the login user's sudo after the revoke at the very end. Every step
# checks its effect and stops the script with "handoff: FAILED: ..." otherwise.
set -u
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH
umask 022

step() { echo "handoff: $*"; }
fail() {
    echo "handoff: FAILED: $*" >&2
    exit 1
}

[ "$(id -u)" -eq 0 ] || fail "must run as root"

has_systemd() { [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; }

home_of() { getent passwd "$1" | cut -d: -f6; }

agent_running() {
    for c in /proc/[0-9]*/cmdline; do
        pid=${c#/proc/}
        pid=${pid%/cmdline}
        [ "$pid" = "$$" ] && continue
        if tr '\0' ' ' <"$c" 2>/dev/null | grep -qE '(^| )/var/vcap/bosh/bin/(bosh-agent|monit)( |$)'; then
            return 0
        fi
    done
    return 1
}

# 1. The BOSH agent (and monit): stopped and disabled -------------------------------
if [ "$KEEP_AGENT" = 1 ]; then
    step "keeping the BOSH agent enabled (keep_agent)"
else
    step "stopping and disabling the BOSH agent and monit"
    if has_systemd; then
        for unit in bosh-agent.service monit.service; do
            if systemctl cat "$unit" >/dev/null 2>&1; then
                systemctl disable --now "$unit" >/dev/null 2>&1 || true
                state=$(systemctl is-enabled "$unit" 2>/dev/null || true)
                case "$state" in
                disabled | masked) ;;
                *)
                    systemctl mask "$unit" >/dev/null 2>&1 || true
                    state=$(systemctl is-enabled "$unit" 2>/dev/null || true)
                    ;;
                esac
                case "$state" in
                disabled | masked) ;;
                *) fail "$unit is still $state after disable" ;;
                esac
                if systemctl is-active --quiet "$unit"; then
                    fail "$unit is still active after stop"
                fi
                step "  $unit: $state, inactive"
            fi
        done
    fi
    for svc in agent monit; do
        d=/etc/service/$svc
        if [ -e "$d" ] || [ -L "$d" ]; then
            if command -v sv >/dev/null 2>&1; then
                sv -w 30 force-stop "$d" >/dev/null 2>&1 || true
            fi
            if [ -L "$d" ]; then
                target=$(readlink -f "$d" || true)
                rm -f "$d"
                [ -n "$target" ] && [ -d "$target" ] && touch "$target/down"
            else
                mkdir -p /etc/sv
                if [ -e "/etc/sv/$svc" ]; then
                    rm -rf "$d"
                else
                    mv "$d" "/etc/sv/$svc"
                fi
                touch "/etc/sv/$svc/down"
            fi
            if [ -e "$d" ] || [ -L "$d" ]; then
                fail "runit service $d still present"
            fi
            step "  runit $svc: removed from /etc/service"
        fi
    done
    waited=0
    while agent_running; do
        if [ "$waited" -ge 30 ]; then
            fail "a BOSH agent or monit process is still running after 30 s"
        fi
        sleep 1
        waited=$((waited + 1))
    done
fi

# 2. The build's key ---------------------------------------------------------------
step "removing the build's SSH key"
for f in /root/.ssh/authorized_keys /root/.ssh/authorized_keys2 /home/*/.ssh/authorized_keys /home/*/.ssh/authorized_keys2; do
    [ -f "$f" ] || continue
    if grep -qF "$BUILD_KEY_COMMENT" "$f"; then
        grep -vF "$BUILD_KEY_COMMENT" "$f" >"$f.opsbake-new" || true
        cat "$f.opsbake-new" >"$f"
        rm -f "$f.opsbake-new"
    fi
done
login_home=$(home_of "$LOGIN_USER")
if [ -n "$login_home" ]; then
    # the keys the agent placed for the login user go entirely (STEMCELLS.md section 5)
    rm -f "$login_home/.ssh/authorized_keys" "$login_home/.ssh/authorized_keys2"
    [ ! -e "$login_home/.ssh/authorized_keys" ] || fail "$login_home/.ssh/authorized_keys still exists"
fi
left=$(grep -rlF "$BUILD_KEY_COMMENT" /root/.ssh /home/*/.ssh 2>/dev/null || true)
[ -z "$left" ] || fail "the build's key ($BUILD_KEY_COMMENT) is still in: $left"

# 3. The appliance user --------------------------------------------------------------
step "creating $APPLIANCE_USER with passwordless sudo, in bosh_sshers"
getent group bosh_sshers >/dev/null || groupadd bosh_sshers || fail "groupadd bosh_sshers"
if id "$APPLIANCE_USER" >/dev/null 2>&1; then
    usermod -a -G bosh_sshers "$APPLIANCE_USER" || fail "usermod -a -G bosh_sshers $APPLIANCE_USER"
else
    useradd -m -s /bin/bash -G bosh_sshers "$APPLIANCE_USER" || fail "useradd $APPLIANCE_USER"
fi
# no password, but not locked either: key logins work with or without PAM
usermod -p '*' "$APPLIANCE_USER" || fail "usermod -p $APPLIANCE_USER"
app_home=$(home_of "$APPLIANCE_USER")
[ -n "$app_home" ] && [ -d "$app_home" ] || fail "$APPLIANCE_USER has no home directory"
install -d -m 0700 -o "$APPLIANCE_USER" -g "$(id -gn "$APPLIANCE_USER")" "$app_home/.ssh" || fail "creating $app_home/.ssh"
sudoers_app=/etc/sudoers.d/opsbake-$APPLIANCE_USER
printf '%s ALL=(ALL) NOPASSWD: ALL\n' "$APPLIANCE_USER" >"$sudoers_app.tmp"
chmod 0440 "$sudoers_app.tmp"
visudo -cf "$sudoers_app.tmp" >/dev/null || fail "visudo refused $sudoers_app"
mv "$sudoers_app.tmp" "$sudoers_app"
id -nG "$APPLIANCE_USER" | tr ' ' '\n' | grep -qx bosh_sshers || fail "$APPLIANCE_USER is not in bosh_sshers"
sudo -n -l -U "$APPLIANCE_USER" 2>/dev/null | grep -q 'NOPASSWD' || fail "$APPLIANCE_USER has no passwordless sudo"

# 4. First-boot unit: the appliance user's key from the OVF environment -------------------
if [ "$OVF_UNIT" = 1 ]; then
    step "installing the first-boot unit that reads public_ssh_key from the OVF environment"
    install -m 0755 "$HANDOFF_DIR/opsbake-ovf-ssh-key" /usr/local/sbin/opsbake-ovf-ssh-key || fail "installing opsbake-ovf-ssh-key"
    install -m 0644 "$HANDOFF_DIR/opsbake-ovf-ssh-key.service" /etc/systemd/system/opsbake-ovf-ssh-key.service || fail "installing the unit"
    if has_systemd; then
        systemctl daemon-reload >/dev/null 2>&1 || true
        systemctl enable opsbake-ovf-ssh-key.service >/dev/null 2>&1 || true
    fi
    if [ ! -L /etc/systemd/system/multi-user.target.wants/opsbake-ovf-ssh-key.service ]; then
        mkdir -p /etc/systemd/system/multi-user.target.wants
        ln -sf /etc/systemd/system/opsbake-ovf-ssh-key.service /etc/systemd/system/multi-user.target.wants/opsbake-ovf-ssh-key.service
    fi
    [ -L /etc/systemd/system/multi-user.target.wants/opsbake-ovf-ssh-key.service ] || fail "opsbake-ovf-ssh-key.service is not enabled"
fi

# 5. Passwords of root and the login user --------------------------------------------
for u in root "$LOGIN_USER"; do
    if [ -n "$PASSWORD_HASH" ]; then
        step "setting the given password hash for $u"
        want=$PASSWORD_HASH
    else
        step "locking the password of $u"
        want='!'
    fi
    usermod -p "$want" "$u" || fail "usermod -p for $u"
    got=$(getent shadow "$u" | cut -d: -f2)
    [ "$got" = "$want" ] || fail "the password of $u was not changed"
done

# 6. Scrub --------------------------------------------------------------------------------
step "scrubbing agent settings, /var/vcap/data, host keys, machine-id, shell history"
rm -f /var/vcap/bosh/settings.json
[ ! -e /var/vcap/bosh/settings.json ] || fail "/var/vcap/bosh/settings.json still exists"
if [ -d /var/vcap/data ]; then
    find /var/vcap/data -mindepth 1 -maxdepth 1 -exec rm -rf --one-file-system {} + 2>/dev/null || true
    [ -z "$(ls -A /var/vcap/data 2>/dev/null)" ] || fail "/var/vcap/data is not empty: $(ls -A /var/vcap/data | head -5 | tr '\n' ' ')"
fi
# host keys and the firstboot marker go together (firstboot.sh regenerates
# both); first let a first boot still making keys finish, or its keys come back
if [ -e /root/firstboot.sh ] && [ ! -e /root/firstboot_done ]; then
    step "waiting for the first-boot host keys (/root/firstboot_done) before removing them"
    waited=0
    while [ ! -e /root/firstboot_done ] && [ "$waited" -lt 300 ]; do
        sleep 1
        waited=$((waited + 1))
    done
    [ -e /root/firstboot_done ] || fail "/root/firstboot_done did not appear in 300 s"
fi
rm -f /etc/ssh/ssh_host_* /root/firstboot_done
if ls /etc/ssh/ssh_host_* >/dev/null 2>&1 || [ -e /root/firstboot_done ]; then
    fail "host keys or /root/firstboot_done still present"
fi
: >/etc/machine-id
if [ -f /var/lib/dbus/machine-id ] && [ ! -L /var/lib/dbus/machine-id ]; then
    rm -f /var/lib/dbus/machine-id
fi
[ ! -s /etc/machine-id ] || fail "/etc/machine-id is not empty"
for h in /root /home/*; do
    rm -f "$h/.bash_history" "$h/.ash_history" "$h/.sh_history" "$h/.zsh_history" "$h/.python_history" "$h/.lesshst" "$h/.viminfo"
done
left=$(ls /root/.bash_history /home/*/.bash_history 2>/dev/null || true)
[ -z "$left" ] || fail "shell history left: $left"
if [ "$KEEP_STAGING" = 1 ]; then
    step "keeping the staging dir $STAGING (--keep-staging): it will be in the image"
else
    rm -rf "$STAGING"
    [ ! -e "$STAGING" ] || fail "$STAGING still exists"
    rmdir "$(dirname "$STAGING")" 2>/dev/null || true
fi

# 7. Last: the login user's passwordless sudo ------------------------------------------
step "revoking the passwordless sudo of $LOGIN_USER"
rm -f "$GRANT_FILE"
for f in /etc/sudoers.d/*; do
    [ -f "$f" ] || continue
    if grep -qE "^[[:space:]]*$LOGIN_USER[[:space:]].*NOPASSWD" "$f"; then
        sed -i "/^[[:space:]]*$LOGIN_USER[[:space:]].*NOPASSWD/d" "$f" || fail "editing $f"
    fi
done
if id -nG "$LOGIN_USER" | tr ' ' '\n' | grep -qx bosh_sudoers; then
    gpasswd -d "$LOGIN_USER" bosh_sudoers >/dev/null || fail "removing $LOGIN_USER from bosh_sudoers"
fi
rm -rf "/run/sudo/ts/$LOGIN_USER" "/var/run/sudo/ts/$LOGIN_USER" "/var/lib/sudo/ts/$LOGIN_USER"
visudo -c >/dev/null 2>&1 || fail "sudoers are invalid after the revoke"
if sudo -n -l -U "$LOGIN_USER" 2>/dev/null | grep -q NOPASSWD; then
    fail "$LOGIN_USER still has passwordless sudo: $(sudo -n -l -U "$LOGIN_USER" | grep NOPASSWD)"
fi
step "done"
