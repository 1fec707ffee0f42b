# qci in dom0: the qci-dom0 binary, the qci.Run service, its settings, the
# directories it writes, and last the policy that lets the dev VM call it.
# Needs no qvm.* state, so it can be applied to an emulated dom0 as well
# (pillar qci:root).
{%- from 'qci/map.jinja' import qci, prefix with context %}

{#- dom0's login user runs dom0 services (qrexec-daemon runs as the first
    member of group qubes), so it owns what qci-dom0 writes. #}
{%- set dom0_user = qci.dom0_user %}
{%- if dom0_user == '' %}
  {%- set members = salt['group.info']('qubes').get('members', []) %}
  {%- if not members %}
    {{- raise('qci pillar: qci:dom0_user is not set and group qubes has no members to take it from') }}
  {%- endif %}
  {%- set dom0_user = members[0] %}
{%- endif %}
{%- set account = salt['user.info'](dom0_user) %}
{%- if not account %}
  {{- raise('qci pillar: qci:dom0_user ' ~ dom0_user | json ~ ' is not a user of this system') }}
{%- endif %}
{%- set dom0_group = salt['file.gid_to_group'](account.gid) %}

{#- The shipped policy names the default dev VM, sd-dev; put the site's
    in its place. #}
{%- import_text 'qci/policy/30-qci.policy' as shipped %}
{%- if shipped.count(' sd-dev ') != 1 %}
  {{- raise('qci/policy/30-qci.policy must name sd-dev exactly once, in the qci.Run allow rule') }}
{%- endif %}
{#- import_text drops the file's last newline. #}
{%- set policy = shipped.rstrip('\n').replace(' sd-dev ', ' ' ~ qci.dev_vm.name ~ ' ') ~ '\n' %}

{%- set s = qci.dom0 %}
{#- qci-dom0's own default when the pillar names none. #}
{%- set artifact_dir = s.artifact_dir if s.artifact_dir is not none else s.work_dir.rstrip('/') ~ '/artifacts' %}
{%- set settings -%}
# qci-dom0's settings, written by Salt (state qci.dom0) from the qci pillar.
# Change the pillar, not this file: the next highstate puts it back.
# Keys not written here take qci-dom0's defaults.
dev_vm = {{ qci.dev_vm.name | json }}
log_dir = {{ (prefix ~ s.log_dir) | json }}
work_dir = {{ (prefix ~ s.work_dir) | json }}
{%- if s.artifact_dir is not none %}
artifact_dir = {{ (prefix ~ s.artifact_dir) | json }}
{%- endif %}
{%- for key in ['job_timeout', 'status_timeout', 'export_timeout', 'kill_grace', 'artifact_timeout'] %}
{%- if s[key] is not none %}
{{ key }} = {{ s[key] | json }}
{%- endif %}
{%- endfor %}
{%- for key in ['max_total_bytes', 'max_entries', 'max_path_len', 'max_artifact_bytes', 'max_artifact_files', 'keep_artifacts'] %}
{%- if s[key] is not none %}
{{ key }} = {{ s[key] }}
{%- endif %}
{%- endfor %}
secrets = {{ s.secrets | json }}
{% endset %}

qci-dom0-binary:
  file.managed:
    - name: {{ prefix }}/usr/bin/qci-dom0
    - source: salt://qci/bin/qci-dom0
    - user: {{ qci.owner }}
    - group: {{ qci.group }}
    - mode: '0755'

qci-dom0-service:
  file.managed:
    - name: {{ prefix }}/etc/qubes-rpc/qci.Run
    - source: salt://qci/qubes-rpc/dom0/qci.Run
    - user: {{ qci.owner }}
    - group: {{ qci.group }}
    - mode: '0755'
    - require:
      - file: qci-dom0-binary

qci-dom0-settings-dir:
  file.directory:
    - name: {{ prefix }}/etc/qci
    - user: {{ qci.owner }}
    - group: {{ qci.group }}
    - mode: '0755'

# Readable by dom0's user and not by others, and no diff in Salt's output:
# it may hold secrets to mask.
qci-dom0-settings:
  file.managed:
    - name: {{ prefix }}/etc/qci/dom0.toml
    - contents: {{ settings | yaml_encode }}
    - user: {{ qci.owner }}
    - group: {{ dom0_group }}
    - mode: '0640'
    - show_changes: False
    - require:
      - file: qci-dom0-settings-dir

{#- The parent directories must exist (they do for the defaults): made
    here, they would belong to dom0's user. #}
{%- for id, dir in [('qci-dom0-log-dir', s.log_dir), ('qci-dom0-work-dir', s.work_dir), ('qci-dom0-artifact-dir', artifact_dir)] %}

{{ id }}:
  file.directory:
    - name: {{ prefix ~ dir }}
    - user: {{ dom0_user }}
    - group: {{ dom0_group }}
    - mode: '0700'
{%- endfor %}

# Last: only a complete install lets the dev VM in.
qci-dom0-policy:
  file.managed:
    - name: {{ prefix }}/etc/qubes/policy.d/30-qci.policy
    - contents: {{ policy | yaml_encode }}
    - user: {{ qci.owner }}
    - group: {{ qci.group }}
    - mode: '0644'
    - require:
      - file: qci-dom0-binary
      - file: qci-dom0-service
      - file: qci-dom0-settings
      - file: qci-dom0-log-dir
      - file: qci-dom0-work-dir
      - file: qci-dom0-artifact-dir
