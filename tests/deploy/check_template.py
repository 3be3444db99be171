#!/usr/bin/env python3
"""Checks what cfn-lint cannot about deploy/template.yaml: least privilege of the function's
role, the CHAT_* environment it gets, and the resources they point at.

    check_template.py TEMPLATE STORE_HEADER KEYS_HEADER USAGE_HEADER LIMITS_HEADER   check; exit 1 listing every failure
    check_template.py --self-test TEMPLATE STORE_HEADER KEYS_HEADER USAGE_HEADER LIMITS_HEADER
                                                                     the template passes, and each mutation in
                                                                     MUTATIONS makes its check fail
    check_template.py --plain TEMPLATE OUT.json                      writes the template as plain CloudFormation
                                                                     (the SAM function as AWS::Lambda::Function)

--plain exists for cfn-lint: on a SAM template it skips some rules (W2001 unused parameters,
W1020 needless Sub, ...), so the tests lint the plain rendering as well.

STORE_HEADER is plugins/dynamodb/include/chatkit/dynamodb_store.hpp: the DynamoDB actions the role
grants must be exactly those the store calls (`client_.call("PutItem", ...)`), and the table's keys
and TTL attribute the ones it uses. The same header holds the store's conversations, in a second
table: on it the role must grant exactly the actions of its `conversations_call("Operation", ...)`
calls, a TransactWriteItems counted as the actions IAM authorizes its items by (a Put needs
PutItem, an Update UpdateItem, a ConditionCheck ConditionCheckItem; there is no IAM action
dynamodb:TransactWriteItems), plus Query on the one index it queries, whatever CHAT_AUTH is; and
the table's keys and index must be those of its create_conversations_table_input(). KEYS_HEADER is dynamodb_key_directory.hpp: on the keys table
the role may do exactly what its `keys()` calls (a server only reads keys; a workstation writes
them), and only with CHAT_AUTH=keys. USAGE_HEADER is dynamodb_usage_store.hpp: on the usage table
the role may do exactly what the usage store calls, on the table and on the one index it queries,
and the table's keys, index and TTL attribute are the ones it uses. LIMITS_HEADER is
dynamodb_counter_store.hpp: on the limits table the role may do exactly what the counter store
calls, and only with CHAT_AUTH=keys or a CHAT_RATE_LIMIT that is not off (nothing is counted
otherwise), and the table's key and TTL attribute are the ones the store writes.

The CloudWatch dashboard must show the metrics the gateway design lists, of this stack's API,
function and tables, in the stack's region.

Needs python3 with PyYAML (Debian: python3-yaml).
"""

import collections
import copy
import json
import os
import re
import sys
import tempfile

try:
    import yaml
except ImportError:  # pragma: no cover
    sys.exit("check_template.py needs PyYAML: apt-get install python3-yaml (or pip install pyyaml)")

FUNCTION_TYPES = ("AWS::Serverless::Function", "AWS::Lambda::Function")
API_GATEWAY_LIMIT_MS = 30000  # HTTP API integrations time out after 30 s at most
CONNECT_TIMEOUT_S = 5         # the upstream connect timeout, fixed (docs/configuration.md)
MARGIN_S = 5                  # left for the DynamoDB write after the upstream call
KEY_LIKE = re.compile(r"sk-[A-Za-z0-9_-]{8,}|AKIA[0-9A-Z]{16}|ASIA[0-9A-Z]{16}")
SECRET_NAME = re.compile(r"(^|_)(API_KEY|KEY|TOKEN|SECRET|PASSWORD|SECRET_ACCESS_KEY)$")
BEDROCK_RESOURCES = {
    "arn:${AWS::Partition}:bedrock:*::foundation-model/*",
    "arn:${AWS::Partition}:bedrock:${AWS::Region}:${AWS::AccountId}:inference-profile/*",
}


# --- loading: CloudFormation's short tags (!Ref, !GetAtt, !Sub, ...) as their long forms --------

class CfnLoader(yaml.SafeLoader):
    pass


def _construct_tag(loader, suffix, node):
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if suffix == "Ref":
        return {"Ref": value}
    if suffix == "Condition":
        return {"Condition": value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {"Fn::" + suffix: value}


CfnLoader.add_multi_constructor("!", _construct_tag)


def load(path):
    with open(path, encoding="utf-8") as f:
        return yaml.load(f, Loader=CfnLoader)


# --- helpers ---------------------------------------------------------------------------------

def as_list(value):
    return value if isinstance(value, list) else [value]


def is_no_value(value):
    return value == {"Ref": "AWS::NoValue"}


def resources_of(tpl, *types):
    return {name: r for name, r in (tpl.get("Resources") or {}).items() if r.get("Type") in types}


def the_one(tpl, kind, *types):
    found = resources_of(tpl, *types)
    if len(found) != 1:
        raise Failure(f"expected exactly one {kind} ({' or '.join(types)}), found {sorted(found) or 'none'}")
    return next(iter(found.items()))


def condition_on(tpl, name):
    """The condition `name` as (parameter, value) when it is Fn::Equals [!Ref P, V], else None."""
    cond = (tpl.get("Conditions") or {}).get(name)
    if isinstance(cond, dict) and isinstance(cond.get("Fn::Equals"), list) and len(cond["Fn::Equals"]) == 2:
        a, b = cond["Fn::Equals"]
        if isinstance(a, dict) and "Ref" in a and isinstance(b, str):
            return a["Ref"], b
    return None


def counts_limits(tpl, name, auth, rate):
    """Whether the condition `name` holds exactly when CHAT_AUTH is keys or CHAT_RATE_LIMIT is not
    off: Fn::Or of a condition CHAT_AUTH == keys and one Fn::Not [CHAT_RATE_LIMIT == off]."""
    if not (isinstance(auth, dict) and isinstance(rate, dict)):
        return False
    cond = (tpl.get("Conditions") or {}).get(name)
    if not (isinstance(cond, dict) and isinstance(cond.get("Fn::Or"), list) and len(cond["Fn::Or"]) == 2):
        return False
    found_keys = found_rate = False
    for part in cond["Fn::Or"]:
        inner = part.get("Condition") if isinstance(part, dict) else None
        if inner and condition_on(tpl, inner) == (auth.get("Ref"), "keys"):
            found_keys = True
            continue
        negated = (tpl.get("Conditions") or {}).get(inner) if inner else None
        if isinstance(negated, dict) and isinstance(negated.get("Fn::Not"), list) and len(negated["Fn::Not"]) == 1:
            eq = negated["Fn::Not"][0]
            if isinstance(eq, dict) and eq.get("Fn::Equals") in ([rate, "off"], ["off", rate]):
                found_rate = True
    return found_keys and found_rate


def branches(value, condition=None):
    """Every value an expression may take, each with the condition it needs (None: always),
    following Fn::If and dropping AWS::NoValue."""
    if isinstance(value, dict) and "Fn::If" in value and isinstance(value["Fn::If"], list) and len(value["Fn::If"]) == 3:
        cond, yes, no = value["Fn::If"]
        return branches(yes, cond) + branches(no, "!" + cond)
    if is_no_value(value):
        return []
    return [(value, condition)]


def role_statements(role):
    """(statement, condition) for every statement of every inline policy of the role."""
    out = []
    for policy in as_list(role.get("Properties", {}).get("Policies") or []):
        for stmt in as_list(policy.get("PolicyDocument", {}).get("Statement") or []):
            out.extend(branches(stmt))
    return out


def is_getatt(value, resource, attribute):
    return isinstance(value, dict) and value.get("Fn::GetAtt") in ([resource, attribute], f"{resource}.{attribute}")


def is_ref(value, name):
    return value == {"Ref": name}


def parameter_default(tpl, value):
    """The value, or the default of the parameter it references."""
    if isinstance(value, dict) and "Ref" in value:
        param = (tpl.get("Parameters") or {}).get(value["Ref"])
        if param is None:
            raise Failure(f"{value['Ref']} is not a parameter")
        if "Default" not in param:
            raise Failure(f"parameter {value['Ref']} has no default")
        return param["Default"]
    return value


def literals(value):
    """Every string inside an expression (a key could hide in any of them)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from literals(v)
    elif isinstance(value, list):
        for v in value:
            yield from literals(v)


def store_facts(header_path):
    try:
        with open(header_path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise Failure(f"cannot read the store header {header_path}: {e}")
    calls = set(re.findall(r'\.call\(\s*"([A-Za-z]+)"', text))
    if not calls:
        raise Failure(f"found no `.call(\"Operation\"` in {header_path}: has the store moved?")
    return {"actions": {"dynamodb:" + c for c in calls}, "text": text}


def keys_read_facts(header_path):
    """The DynamoDB actions of the key directory's keys(), the only member a server calls."""
    try:
        with open(header_path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise Failure(f"cannot read the key directory header {header_path}: {e}")
    body = re.search(r"result<std::vector<key_record>> keys\(\) \{\n(.*?)\n    \}\n", text, re.S)
    if not body:
        raise Failure(f"found no `keys()` member in {header_path}: has the key directory moved?")
    calls = set(re.findall(r'\.call\(\s*"([A-Za-z]+)"', body.group(1)))
    if not calls:
        raise Failure(f"keys() in {header_path} makes no `.call(\"Operation\"`: has it moved?")
    return {"actions": {"dynamodb:" + c for c in calls}, "text": text}


def usage_facts(header_path):
    """The DynamoDB actions of the usage store, and the name of the index it queries."""
    facts = store_facts(header_path)
    index = re.search(r'key_index = "([A-Za-z0-9_.-]+)"', facts["text"])
    if not index:
        raise Failure(f"found no `key_index = \"NAME\"` in {header_path}: has the usage store moved?")
    facts["index"] = index.group(1)
    return facts


def limits_facts(header_path):
    """The DynamoDB actions of the counter store, its table's partition key and TTL attribute."""
    facts = store_facts(header_path)
    key = re.search(r'\{"KeySchema", \{\{\{"AttributeName", "([A-Za-z0-9_]+)"\}, \{"KeyType", "HASH"\}\}\}\}', facts["text"])
    ttl = re.search(r'"ADD n :amount SET ([A-Za-z0-9_]+) = :expires"', facts["text"])
    if not key or not ttl:
        raise Failure(f"found no KeySchema in create_table_input() or no `ADD n :amount SET ATTRIBUTE = :expires` "
                      f"in {header_path}: has the counter store moved?")
    facts["key"], facts["ttl"] = key.group(1), ttl.group(1)
    return facts


# TransactWriteItems and TransactGetItems are not IAM actions (cfn-lint's W3037 refuses
# dynamodb:TransactWriteItems): IAM authorizes each item of a transaction as the single-item
# action it stands for, a ConditionCheck as ConditionCheckItem.
TRANSACTION_CALLS = ("TransactWriteItems", "TransactGetItems")
TRANSACTION_ITEM_ACTIONS = {"Put": "PutItem", "Update": "UpdateItem", "Delete": "DeleteItem",
                            "ConditionCheck": "ConditionCheckItem", "Get": "GetItem"}


def conversations_facts(header_path):
    """What the store does on its conversations table: the IAM actions of its conversations_call()s
    (a transaction counted as its items' actions), the index it queries (None: none), and the
    table its create_conversations_table_input() describes: keys, attribute types, index."""
    text = store_facts(header_path)["text"]
    calls = set(re.findall(r'conversations_call\(\s*"([A-Za-z]+)"', text))
    if not calls:
        raise Failure(f"found no `conversations_call(\"Operation\"` in {header_path}: have the conversations moved?")
    actions = {"dynamodb:" + c for c in calls if c not in TRANSACTION_CALLS}
    if calls & set(TRANSACTION_CALLS):
        kinds = set(re.findall(r'\["(' + "|".join(TRANSACTION_ITEM_ACTIONS) + r')"\]\s*=', text))
        if not kinds:
            raise Failure(f"{header_path} calls {sorted(calls & set(TRANSACTION_CALLS))} but makes no transaction item "
                          f"(`x[\"Put\"] = ...`): has the store moved?")
        actions |= {"dynamodb:" + TRANSACTION_ITEM_ACTIONS[k] for k in kinds}
    index = re.search(r'conversations_index = "([A-Za-z0-9_.-]+)"', text)
    body = re.search(r"create_conversations_table_input\(const std::string& table\) \{\n(.*?)\n    \}\n", text, re.S)
    if not index or not body:
        raise Failure(f"found no `conversations_index = \"NAME\"` or no create_conversations_table_input() in "
                      f"{header_path}: has the store moved?")
    # Whether a member queries the index: `{"IndexName", conversations_index}` outside this function.
    queried = re.search(r'\{"IndexName", conversations_index\}', text.replace(body.group(1), "")) is not None
    body = body.group(1).replace("conversations_index", f'"{index.group(1)}"')
    types = dict(re.findall(r'\{\{"AttributeName", "([A-Za-z0-9_]+)"\}, \{"AttributeType", "([SNB])"\}\}', body))
    schemas = [dict(re.findall(r'key\("([A-Za-z0-9_]+)", "(HASH|RANGE)"\)', ks))
               for ks in re.findall(r'\{"KeySchema", \{(.*?)\}\}', body)]
    names = re.findall(r'\{"IndexName", "([A-Za-z0-9_.-]+)"\}', body)
    projections = re.findall(r'\{"ProjectionType", "([A-Z_]+)"\}', body)
    if not types or len(schemas) != 1 + len(names) or len(projections) != len(names):
        raise Failure(f"cannot read the keys and indexes of create_conversations_table_input() in {header_path}: "
                      f"has it changed shape?")
    return {"actions": actions, "index": index.group(1) if queried else None, "types": types, "keys": schemas[0],
            "indexes": {n: (k, p) for n, k, p in zip(names, schemas[1:], projections)}, "text": text}


# The four headers the checks read: the history store's, the key directory's, the usage store's
# and the counter store's (the limits).
Headers = collections.namedtuple("Headers", "store keys usage limits")


class Failure(Exception):
    pass


# --- the checks --------------------------------------------------------------------------------

CHECKS = []


def check(check_id):
    def register(fn):
        CHECKS.append((check_id, fn))
        return fn
    return register


def function_of(tpl):
    return the_one(tpl, "Lambda function", *FUNCTION_TYPES)


def env_of(tpl):
    _, fn = function_of(tpl)
    return fn.get("Properties", {}).get("Environment", {}).get("Variables") or {}


def role_of(tpl):
    fn_name, fn = function_of(tpl)
    role_name, role = the_one(tpl, "IAM role", "AWS::IAM::Role")
    if not is_getatt(fn.get("Properties", {}).get("Role"), role_name, "Arn"):
        raise Failure(f"{fn_name}'s Role is not !GetAtt {role_name}.Arn (SAM would create a role of its own)")
    return role_name, role


@check("role-is-ours")
def _(tpl, header):
    fn_name, fn = function_of(tpl)
    role_name, role = role_of(tpl)
    props = fn.get("Properties", {})
    for key in ("Policies", "PermissionsBoundary"):
        if key in props:
            raise Failure(f"{fn_name} has {key}: SAM would add policies beyond {role_name}'s")
    if role.get("Properties", {}).get("ManagedPolicyArns"):
        raise Failure(f"{role_name} has ManagedPolicyArns (AWSLambdaBasicExecutionRole allows logs:CreateLogGroup on *)")
    for name, r in (tpl.get("Resources") or {}).items():
        if r.get("Type") in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy", "AWS::IAM::RolePolicy"):
            raise Failure(f"{name} ({r['Type']}) would add permissions outside the role's inline policy")


@check("role-no-wildcard-action")
def _(tpl, header):
    _, role = role_of(tpl)
    for stmt, _cond in role_statements(role):
        if "NotAction" in stmt or "NotResource" in stmt:
            raise Failure(f"statement {stmt.get('Sid')} uses NotAction/NotResource")
        if stmt.get("Effect") != "Allow":
            raise Failure(f"statement {stmt.get('Sid')} is not a plain Allow")
        for action in as_list(stmt.get("Action")):
            if not isinstance(action, str) or "*" in action:
                raise Failure(f"statement {stmt.get('Sid')} allows the action {action!r}")


@check("role-no-wildcard-resource")
def _(tpl, header):
    _, role = role_of(tpl)
    for stmt, cond in role_statements(role):
        services = {a.split(":")[0] for a in as_list(stmt.get("Action")) if isinstance(a, str)}
        for resource in as_list(stmt.get("Resource")):
            text = resource if isinstance(resource, str) else resource.get("Fn::Sub") if isinstance(resource, dict) else None
            if isinstance(text, list) and text:  # !Sub [string, {variables}]
                text = text[0]
            if resource == "*" or (isinstance(text, str) and "*" in text):
                # Bedrock alone may name models by pattern, and only when it is the provider.
                bedrock_only = services == {"bedrock"} and text in BEDROCK_RESOURCES
                if not (bedrock_only and cond and condition_on(tpl, cond) == ("Provider", "bedrock")):
                    raise Failure(f"statement {stmt.get('Sid')} allows the resource {resource!r}")
            elif not isinstance(resource, dict) or not ("Ref" in resource or "Fn::GetAtt" in resource or "Fn::Sub" in resource):
                raise Failure(f"statement {stmt.get('Sid')} names {resource!r}, not a resource of this stack")


def granted(role, service):
    """{action: [(resource, condition)]} for one service prefix."""
    out = {}
    for stmt, cond in role_statements(role):
        for action in as_list(stmt.get("Action")):
            if isinstance(action, str) and action.startswith(service + ":"):
                out.setdefault(action, []).extend((r, cond) for r in as_list(stmt.get("Resource")))
    return out


@check("role-services")
def _(tpl, header):
    _, role = role_of(tpl)
    for stmt, cond in role_statements(role):
        for action in as_list(stmt.get("Action")):
            service = str(action).split(":")[0]
            if service not in ("logs", "dynamodb", "secretsmanager", "bedrock"):
                raise Failure(f"the role allows {action}: the function calls only CloudWatch Logs, DynamoDB, Secrets Manager and Bedrock")
            if service == "bedrock" and not (cond and condition_on(tpl, cond) == ("Provider", "bedrock")):
                raise Failure(f"{action} is granted whatever the provider (it must depend on Provider=bedrock)")


@check("role-logs")
def _(tpl, header):
    _, role = role_of(tpl)
    group_name, _ = the_one(tpl, "log group", "AWS::Logs::LogGroup")
    logs = granted(role, "logs")
    if set(logs) != {"logs:CreateLogStream", "logs:PutLogEvents"}:
        raise Failure(f"logs actions are {sorted(logs)}, not exactly CreateLogStream and PutLogEvents")
    for action, targets in logs.items():
        for resource, cond in targets:
            if not is_getatt(resource, group_name, "Arn") or cond:
                raise Failure(f"{action} is granted on {resource!r}, not exactly !GetAtt {group_name}.Arn")


def database_tables(tpl):
    """((name, resource) of the history table, of the keys table, of the usage table, of the limits
    table, of the conversations table), as the function's CHAT_DATABASE_URL names them:
    dynamodb://${History}?...&keys_table=${Keys}&usage_table=${Usage}&limits_table=${Limits}
    &conversations_table=${Conversations}."""
    tables = resources_of(tpl, "AWS::DynamoDB::Table")
    url = env_of(tpl).get("CHAT_DATABASE_URL")
    text = url.get("Fn::Sub") if isinstance(url, dict) else url
    if not isinstance(text, str) or not text.startswith("dynamodb://"):
        raise Failure(f"CHAT_DATABASE_URL is {url!r}, not a dynamodb:// URL")
    history = re.match(r"dynamodb://\$\{([A-Za-z0-9]+)\}(\?|$)", text)
    if not history or history.group(1) not in tables:
        raise Failure(f"CHAT_DATABASE_URL {text!r} does not name a table of the stack as ${{Table}}")
    keys = re.search(r"[?&]keys_table=\$\{([A-Za-z0-9]+)\}(&|$)", text)
    if not keys or keys.group(1) not in tables or keys.group(1) == history.group(1):
        raise Failure(f"CHAT_DATABASE_URL {text!r} does not name the keys table as keys_table=${{KeysTable}}")
    usage = re.search(r"[?&]usage_table=\$\{([A-Za-z0-9]+)\}(&|$)", text)
    if not usage or usage.group(1) not in tables or usage.group(1) in (history.group(1), keys.group(1)):
        raise Failure(f"CHAT_DATABASE_URL {text!r} does not name the usage table as usage_table=${{UsageTable}}")
    limits = re.search(r"[?&]limits_table=\$\{([A-Za-z0-9]+)\}(&|$)", text)
    if not limits or limits.group(1) not in tables or limits.group(1) in (history.group(1), keys.group(1), usage.group(1)):
        raise Failure(f"CHAT_DATABASE_URL {text!r} does not name the limits table as limits_table=${{LimitsTable}}")
    conversations = re.search(r"[?&]conversations_table=\$\{([A-Za-z0-9]+)\}(&|$)", text)
    if not conversations or conversations.group(1) not in tables or conversations.group(1) in (
            history.group(1), keys.group(1), usage.group(1), limits.group(1)):
        raise Failure(f"CHAT_DATABASE_URL {text!r} does not name the conversations table as "
                      f"conversations_table=${{ConversationsTable}}")
    if len(tables) != 5:
        raise Failure(f"expected five DynamoDB tables (history, keys, usage, limits, conversations), found {sorted(tables)}")
    return tuple((name, tables[name]) for name in (history.group(1), keys.group(1), usage.group(1), limits.group(1),
                                                   conversations.group(1)))


@check("role-dynamodb")
def _(tpl, header):
    _, role = role_of(tpl)
    (history_name, _), (keys_name, _), (usage_name, _), (limits_name, _), (conv_name, _) = database_tables(tpl)
    usage = usage_facts(header.usage)
    usage_index = f"${{{usage_name}.Arn}}/index/{usage['index']}"
    conv = conversations_facts(header.store)
    conv_index = f"${{{conv_name}.Arn}}/index/{conv['index']}" if conv["index"] else None
    auth = env_of(tpl).get("CHAT_AUTH")
    on_history, on_keys, on_usage, on_usage_index, on_limits = set(), set(), set(), set(), set()
    on_conv, on_conv_index = set(), set()
    for action, targets in granted(role, "dynamodb").items():
        for resource, cond in targets:
            if is_getatt(resource, history_name, "Arn") and not cond:
                on_history.add(action)
            elif is_getatt(resource, keys_name, "Arn"):
                # Reading keys is needed only with CHAT_AUTH=keys, so granted only then.
                if not (isinstance(auth, dict) and cond and condition_on(tpl, cond) == (auth.get("Ref"), "keys")):
                    raise Failure(f"{action} on {keys_name} is granted whatever CHAT_AUTH is (it must depend on CHAT_AUTH=keys)")
                on_keys.add(action)
            elif is_getatt(resource, limits_name, "Arn"):
                # Limits are counted only for API keys (CHAT_AUTH=keys) and for a per-client rate
                # limit (CHAT_RATE_LIMIT not off), so granted only then.
                if not (cond and counts_limits(tpl, cond, auth, env_of(tpl).get("CHAT_RATE_LIMIT"))):
                    raise Failure(f"{action} on {limits_name} is granted whatever CHAT_AUTH and CHAT_RATE_LIMIT are "
                                  "(it must depend on CHAT_AUTH=keys or a rate limit)")
                on_limits.add(action)
            elif is_getatt(resource, usage_name, "Arn") and not cond:
                on_usage.add(action)
            elif isinstance(resource, dict) and resource.get("Fn::Sub") == usage_index and not cond:
                on_usage_index.add(action)
            elif is_getatt(resource, conv_name, "Arn") and not cond:
                # Conversations are served whatever CHAT_AUTH is, so granted always.
                on_conv.add(action)
            elif conv_index and isinstance(resource, dict) and resource.get("Fn::Sub") == conv_index and not cond:
                on_conv_index.add(action)
            else:
                raise Failure(f"{action} is granted on {resource!r}, not exactly !GetAtt {history_name}.Arn, "
                              f"!GetAtt {keys_name}.Arn, !GetAtt {usage_name}.Arn, !Sub {usage_index}, "
                              f"!GetAtt {limits_name}.Arn, !GetAtt {conv_name}.Arn"
                              f"{f' or !Sub {conv_index}' if conv_index else ' (whose index the store never queries)'} "
                              f"(no other index, no other table, no condition on the history, the usage or the "
                              f"conversations)")
    wanted = store_facts(header.store)["actions"]
    if on_history != wanted:
        raise Failure(f"dynamodb actions on {history_name} are {sorted(on_history)}; the store calls exactly {sorted(wanted)}")
    wanted = keys_read_facts(header.keys)["actions"]
    if on_keys != wanted:
        raise Failure(f"dynamodb actions on {keys_name} are {sorted(on_keys)}; a server reads keys with exactly "
                      f"{sorted(wanted)} (writes are a workstation's)")
    if on_usage != usage["actions"]:
        raise Failure(f"dynamodb actions on {usage_name} are {sorted(on_usage)}; the usage store calls exactly {sorted(usage['actions'])}")
    # Of the usage store's calls only Query reads an index (a key's spending).
    if on_usage_index != {"dynamodb:Query"} & usage["actions"]:
        raise Failure(f"dynamodb actions on {usage_index} are {sorted(on_usage_index)}, not exactly Query")
    wanted = limits_facts(header.limits)["actions"]
    if on_limits != wanted:
        raise Failure(f"dynamodb actions on {limits_name} are {sorted(on_limits)}; the counter store calls exactly {sorted(wanted)}")
    if on_conv != conv["actions"]:
        raise Failure(f"dynamodb actions on {conv_name} are {sorted(on_conv)}; the store's conversations need exactly "
                      f"{sorted(conv['actions'])} (a transaction as its items' actions)")
    # Of the conversation calls only Query reads an index (a user's conversations).
    if on_conv_index != ({"dynamodb:Query"} & conv["actions"] if conv_index else set()):
        raise Failure(f"dynamodb actions on {conv_index} are {sorted(on_conv_index)}, not exactly Query")


@check("role-secret")
def _(tpl, header):
    _, role = role_of(tpl)
    secret_name, secret = the_one(tpl, "secret", "AWS::SecretsManager::Secret")
    secrets = granted(role, "secretsmanager")
    if set(secrets) != {"secretsmanager:GetSecretValue"}:
        raise Failure(f"secretsmanager actions are {sorted(secrets)}, not exactly GetSecretValue")
    for resource, cond in secrets["secretsmanager:GetSecretValue"]:
        if not is_ref(resource, secret_name):
            raise Failure(f"GetSecretValue is granted on {resource!r}, not exactly !Ref {secret_name}")
        if cond != secret.get("Condition"):
            raise Failure(f"GetSecretValue depends on {cond}, the secret on {secret.get('Condition')}")


@check("env-database-url")
def _(tpl, header):
    (history_name, _), _, _, _, _ = database_tables(tpl)
    text = env_of(tpl)["CHAT_DATABASE_URL"]
    text = text.get("Fn::Sub") if isinstance(text, dict) else text
    if not text.startswith(f"dynamodb://${{{history_name}}}"):
        raise Failure(f"CHAT_DATABASE_URL {text!r} does not name the table ${{{history_name}}}")
    if "${AWS::Region}" not in text:
        raise Failure(f"CHAT_DATABASE_URL {text!r} does not pin region=${{AWS::Region}}")


# Each provider that reads its key from the stack's secret, by the variable that names the secret.
SECRET_ARN_VARIABLES = {"CHAT_OPENAI_API_KEY_SECRET_ARN": "openai", "CHAT_ANTHROPIC_API_KEY_SECRET_ARN": "anthropic",
                        "CHAT_GEMINI_API_KEY_SECRET_ARN": "gemini"}


@check("env-secret-arn")
def _(tpl, header):
    secret_name, secret = the_one(tpl, "secret", "AWS::SecretsManager::Secret")
    env = env_of(tpl)
    set_when = set()
    for variable, provider in SECRET_ARN_VARIABLES.items():
        arn = env.get(variable)
        values = branches(arn)
        if not values or any(not is_ref(v, secret_name) for v, _ in values):
            raise Failure(f"{variable} is {arn!r}, not !Ref {secret_name}")
        for _, cond in values:
            if not cond or condition_on(tpl, cond) != ("Provider", provider):
                raise Failure(f"{variable} is set when Provider is not {provider}")
            set_when.add(cond)
    # The secret exists exactly when one of those variables is set.
    cond = (tpl.get("Conditions") or {}).get(secret.get("Condition"))
    alternatives = cond.get("Fn::Or") if isinstance(cond, dict) else None
    if not isinstance(alternatives, list) or {a.get("Condition") for a in alternatives if isinstance(a, dict)} != set_when:
        raise Failure(f"{secret_name} does not exist exactly when a provider reads its key from it")
    # The secret's own value in the template must not be a key either.
    for text in literals(secret.get("Properties", {})):
        if KEY_LIKE.search(text):
            raise Failure(f"{secret_name} holds what looks like a key in the template")


@check("env-no-key")
def _(tpl, header):
    params = tpl.get("Parameters") or {}
    for name, value in env_of(tpl).items():
        if name.endswith("_ARN"):
            pass
        elif SECRET_NAME.search(name) or name in ("OPENAI_API_KEY", "CHAT_OPENAI_API_KEY", "AWS_BEARER_TOKEN_BEDROCK"):
            raise Failure(f"the environment sets {name}: a secret would sit there in plain text")
        for text in literals(value):
            if KEY_LIKE.search(text):
                raise Failure(f"{name} holds what looks like a key")
        for ref in re.findall(r"\$\{([A-Za-z0-9]+)\}", " ".join(literals(value))) + [
                v["Ref"] for v, _ in branches(value) if isinstance(v, dict) and "Ref" in v]:
            if params.get(ref, {}).get("NoEcho"):
                raise Failure(f"{name} takes the NoEcho parameter {ref}: it would be plain text in the environment")


@check("env-upstream-deadline")
def _(tpl, header):
    fn_name, fn = function_of(tpl)
    env = env_of(tpl)
    timeout = fn.get("Properties", {}).get("Timeout")
    if not (isinstance(timeout, dict) and "Ref" in timeout):
        raise Failure(f"{fn_name}'s Timeout is not a parameter")
    param = (tpl.get("Parameters") or {}).get(timeout["Ref"]) or {}
    allowed = param.get("AllowedValues")
    if not allowed or param.get("Default") not in allowed:
        raise Failure(f"parameter {timeout['Ref']} must list its AllowedValues (each one has its upstream limits)")
    lookups = {}
    for var in ("CHAT_UPSTREAM_DEADLINE", "CHAT_UPSTREAM_TIMEOUT"):
        value = env.get(var)
        fim = value.get("Fn::FindInMap") if isinstance(value, dict) else None
        if not (isinstance(fim, list) and len(fim) == 3 and fim[1] == timeout):
            raise Failure(f"{var} is {value!r}, not a FindInMap keyed by the function timeout")
        lookups[var] = fim
    for seconds in allowed:
        limits = {}
        for var, (mapping, _, attr) in lookups.items():
            try:
                limits[var] = int(tpl["Mappings"][mapping][str(seconds)][attr])
            except (KeyError, TypeError, ValueError):
                raise Failure(f"no {mapping}.{seconds}.{attr} for {var}")
        worst = limits["CHAT_UPSTREAM_DEADLINE"] + CONNECT_TIMEOUT_S + limits["CHAT_UPSTREAM_TIMEOUT"]
        if worst + MARGIN_S > int(seconds) or min(limits.values()) < 1:
            raise Failure(f"with a {seconds} s timeout, deadline {limits['CHAT_UPSTREAM_DEADLINE']} + connect "
                          f"{CONNECT_TIMEOUT_S} + silence {limits['CHAT_UPSTREAM_TIMEOUT']} + margin {MARGIN_S} "
                          f"exceeds the function timeout")
    for name, integ in resources_of(tpl, "AWS::ApiGatewayV2::Integration").items():
        ms = integ.get("Properties", {}).get("TimeoutInMillis", API_GATEWAY_LIMIT_MS)
        if int(ms) > API_GATEWAY_LIMIT_MS:
            raise Failure(f"{name} TimeoutInMillis {ms} is above the HTTP API limit")


@check("env-log-format")
def _(tpl, header):
    if env_of(tpl).get("CHAT_LOG_FORMAT", "json") != "json":
        raise Failure("CHAT_LOG_FORMAT must stay json (CloudWatch Logs Insights reads the fields)")


@check("log-group")
def _(tpl, header):
    fn_name, fn = function_of(tpl)
    group_name, group = the_one(tpl, "log group", "AWS::Logs::LogGroup")
    props = group.get("Properties", {})
    retention = props.get("RetentionInDays")
    if retention is None or parameter_default(tpl, retention) in (None, ""):
        raise Failure(f"{group_name} has no RetentionInDays (logs would be kept forever)")
    name = props.get("LogGroupName")
    name = name.get("Fn::Sub") if isinstance(name, dict) else name
    function_name = fn.get("Properties", {}).get("FunctionName")
    expected = ("/aws/lambda/${AWS::StackName}" if is_ref(function_name, "AWS::StackName")
                else "/aws/lambda/" + function_name if isinstance(function_name, str) else None)
    if expected is None or name != expected:
        raise Failure(f"{group_name} is named {name!r}, not /aws/lambda/<the function's name> ({expected!r})")
    if not is_ref(fn.get("Properties", {}).get("LoggingConfig", {}).get("LogGroup"), group_name):
        raise Failure(f"{fn_name}'s LoggingConfig.LogGroup is not !Ref {group_name}")


@check("table-design")
def _(tpl, header):
    (table_name, table), _, _, _, _ = database_tables(tpl)
    p = table.get("Properties", {})
    keys = {k.get("AttributeName"): k.get("KeyType") for k in p.get("KeySchema") or []}
    types = {a.get("AttributeName"): a.get("AttributeType") for a in p.get("AttributeDefinitions") or []}
    if keys != {"user_id": "HASH", "exchange_key": "RANGE"} or types != {"user_id": "S", "exchange_key": "S"}:
        raise Failure(f"{table_name} keys are {keys} {types}, not user_id (S, HASH) and exchange_key (S, RANGE)")
    text = store_facts(header.store)["text"]
    for attribute in ("user_id", "exchange_key", "expires_at"):
        if f'"{attribute}"' not in text:
            raise Failure(f"the store no longer mentions {attribute!r}: the table design has drifted")
    if p.get("GlobalSecondaryIndexes") or p.get("LocalSecondaryIndexes"):
        raise Failure(f"{table_name} has an index the store never queries")
    ttl = p.get("TimeToLiveSpecification") or {}
    if ttl.get("AttributeName") != "expires_at" or ttl.get("Enabled") is not True:
        raise Failure(f"{table_name} TTL is {ttl}, not enabled on expires_at")
    if (p.get("PointInTimeRecoverySpecification") or {}).get("PointInTimeRecoveryEnabled") is not True:
        raise Failure(f"{table_name} has no point-in-time recovery")
    if (p.get("SSESpecification") or {}).get("SSEEnabled") is not True:
        raise Failure(f"{table_name} has no SSESpecification.SSEEnabled")
    if p.get("BillingMode") != "PAY_PER_REQUEST":
        raise Failure(f"{table_name} is not on-demand (PAY_PER_REQUEST)")
    if table.get("DeletionPolicy") != "Retain":
        raise Failure(f"{table_name} would be deleted with the stack, history and all")


@check("keys-table-design")
def _(tpl, header):
    _, (table_name, table), _, _, _ = database_tables(tpl)
    p = table.get("Properties", {})
    keys = {k.get("AttributeName"): k.get("KeyType") for k in p.get("KeySchema") or []}
    types = {a.get("AttributeName"): a.get("AttributeType") for a in p.get("AttributeDefinitions") or []}
    if keys != {"pk": "HASH"} or types != {"pk": "S"}:
        raise Failure(f"{table_name} keys are {keys} {types}, not pk (S, HASH) alone")
    text = keys_read_facts(header.keys)["text"]
    for needle in ('"pk"', '"team#"', '"key#"'):
        if needle not in text:
            raise Failure(f"the key directory no longer mentions {needle}: the table design has drifted")
    if p.get("GlobalSecondaryIndexes") or p.get("LocalSecondaryIndexes"):
        raise Failure(f"{table_name} has an index the key directory never queries")
    if p.get("TimeToLiveSpecification"):
        raise Failure(f"{table_name} has a TTL: revoked keys must stay, so their ids keep naming them")
    if (p.get("PointInTimeRecoverySpecification") or {}).get("PointInTimeRecoveryEnabled") is not True:
        raise Failure(f"{table_name} has no point-in-time recovery")
    if (p.get("SSESpecification") or {}).get("SSEEnabled") is not True:
        raise Failure(f"{table_name} has no SSESpecification.SSEEnabled")
    if p.get("BillingMode") != "PAY_PER_REQUEST":
        raise Failure(f"{table_name} is not on-demand (PAY_PER_REQUEST)")
    if table.get("DeletionPolicy") != "Retain":
        raise Failure(f"{table_name} would be deleted with the stack, and every key with it")


@check("usage-table-design")
def _(tpl, header):
    _, _, (table_name, table), _, _ = database_tables(tpl)
    p = table.get("Properties", {})
    keys = {k.get("AttributeName"): k.get("KeyType") for k in p.get("KeySchema") or []}
    types = {a.get("AttributeName"): a.get("AttributeType") for a in p.get("AttributeDefinitions") or []}
    if keys != {"pk": "HASH", "sk": "RANGE"} or types != {"pk": "S", "sk": "S", "key_id": "S"}:
        raise Failure(f"{table_name} keys are {keys} {types}, not pk (S, HASH) and sk (S, RANGE), with key_id (S) for the index")
    facts = usage_facts(header.usage)
    for needle in ('"pk"', '"sk"', '"key_id"', '"cost_usd"', '"expires_at"', '"team#"'):
        if needle not in facts["text"]:
            raise Failure(f"the usage store no longer mentions {needle}: the table design has drifted")
    indexes = p.get("GlobalSecondaryIndexes") or []
    if p.get("LocalSecondaryIndexes") or len(indexes) != 1:
        raise Failure(f"{table_name} must have exactly one index, the global {facts['index']} the usage store queries")
    index = indexes[0]
    index_keys = {k.get("AttributeName"): k.get("KeyType") for k in index.get("KeySchema") or []}
    projection = index.get("Projection") or {}
    if index.get("IndexName") != facts["index"] or index_keys != {"key_id": "HASH", "sk": "RANGE"}:
        raise Failure(f"{table_name}'s index is {index.get('IndexName')} {index_keys}, not {facts['index']} on key_id (HASH) and sk (RANGE)")
    if projection.get("ProjectionType") != "ALL" and "cost_usd" not in (projection.get("NonKeyAttributes") or []):
        raise Failure(f"{table_name}'s index does not project cost_usd, which a key's spending sums")
    ttl = p.get("TimeToLiveSpecification") or {}
    if ttl.get("AttributeName") != "expires_at" or ttl.get("Enabled") is not True:
        raise Failure(f"{table_name} TTL is {ttl}, not enabled on expires_at (records would be kept forever)")
    if (p.get("PointInTimeRecoverySpecification") or {}).get("PointInTimeRecoveryEnabled") is not True:
        raise Failure(f"{table_name} has no point-in-time recovery")
    if (p.get("SSESpecification") or {}).get("SSEEnabled") is not True:
        raise Failure(f"{table_name} has no SSESpecification.SSEEnabled")
    if p.get("BillingMode") != "PAY_PER_REQUEST":
        raise Failure(f"{table_name} is not on-demand (PAY_PER_REQUEST)")
    if table.get("DeletionPolicy") != "Retain":
        raise Failure(f"{table_name} would be deleted with the stack, and what was billed with it")


@check("limits-table-design")
def _(tpl, header):
    _, _, _, (table_name, table), _ = database_tables(tpl)
    p = table.get("Properties", {})
    facts = limits_facts(header.limits)
    keys = {k.get("AttributeName"): k.get("KeyType") for k in p.get("KeySchema") or []}
    types = {a.get("AttributeName"): a.get("AttributeType") for a in p.get("AttributeDefinitions") or []}
    if keys != {facts["key"]: "HASH"} or types != {facts["key"]: "S"}:
        raise Failure(f"{table_name} keys are {keys} {types}, not {facts['key']} (S, HASH) alone, as the counter store's")
    if p.get("GlobalSecondaryIndexes") or p.get("LocalSecondaryIndexes"):
        raise Failure(f"{table_name} has an index the counter store never queries")
    ttl = p.get("TimeToLiveSpecification") or {}
    if ttl.get("AttributeName") != facts["ttl"] or ttl.get("Enabled") is not True:
        raise Failure(f"{table_name} TTL is {ttl}, not enabled on {facts['ttl']}, where the counter store writes "
                      f"the end of a counter's window (counters would be kept forever)")
    if (p.get("SSESpecification") or {}).get("SSEEnabled") is not True:
        raise Failure(f"{table_name} has no SSESpecification.SSEEnabled")
    if p.get("BillingMode") != "PAY_PER_REQUEST":
        raise Failure(f"{table_name} is not on-demand (PAY_PER_REQUEST)")


@check("conversations-table-design")
def _(tpl, header):
    _, _, _, _, (table_name, table) = database_tables(tpl)
    p = table.get("Properties", {})
    facts = conversations_facts(header.store)
    keys = {k.get("AttributeName"): k.get("KeyType") for k in p.get("KeySchema") or []}
    types = {a.get("AttributeName"): a.get("AttributeType") for a in p.get("AttributeDefinitions") or []}
    if keys != facts["keys"] or types != facts["types"]:
        raise Failure(f"{table_name} keys are {keys} {types}, not {facts['keys']} {facts['types']}, "
                      f"as create_conversations_table_input() has them")
    indexes = {}
    for index in p.get("GlobalSecondaryIndexes") or []:
        projection = index.get("Projection") or {}
        if projection.get("NonKeyAttributes"):
            raise Failure(f"{table_name}'s index {index.get('IndexName')} projects only some attributes")
        indexes[index.get("IndexName")] = ({k.get("AttributeName"): k.get("KeyType") for k in index.get("KeySchema") or []},
                                           projection.get("ProjectionType", "KEYS_ONLY"))
    if p.get("LocalSecondaryIndexes") or indexes != facts["indexes"]:
        raise Failure(f"{table_name}'s indexes are {indexes}, not {facts['indexes']} as create_conversations_table_input() "
                      f"has them (a conversation listing reads every attribute from the index)")
    for needle in ('"CONV#"', '"#META"', '"MSG#"', '"MID#"', '"FB#"'):
        if needle not in facts["text"]:
            raise Failure(f"the store no longer mentions {needle}: the conversations table design has drifted")
    if p.get("TimeToLiveSpecification"):
        raise Failure(f"{table_name} has a TTL: the store writes no expiry, a conversation lives until it is deleted")
    if (p.get("PointInTimeRecoverySpecification") or {}).get("PointInTimeRecoveryEnabled") is not True:
        raise Failure(f"{table_name} has no point-in-time recovery")
    if (p.get("SSESpecification") or {}).get("SSEEnabled") is not True:
        raise Failure(f"{table_name} has no SSESpecification.SSEEnabled")
    if p.get("BillingMode") != "PAY_PER_REQUEST":
        raise Failure(f"{table_name} is not on-demand (PAY_PER_REQUEST)")
    if table.get("DeletionPolicy") != "Retain" or table.get("UpdateReplacePolicy") != "Retain":
        raise Failure(f"{table_name} would be deleted with the stack or on replacement, every conversation with it")


@check("env-auth")
def _(tpl, header):
    auth = env_of(tpl).get("CHAT_AUTH", "none")
    param = (tpl.get("Parameters") or {}).get(auth.get("Ref")) if isinstance(auth, dict) else None
    if not param or sorted(param.get("AllowedValues") or []) != ["keys", "none"]:
        raise Failure(f"CHAT_AUTH is {auth!r}, not a parameter allowing exactly none and keys")


@check("function-runtime")
def _(tpl, header):
    fn_name, fn = function_of(tpl)
    p = fn.get("Properties", {})
    want = {"Runtime": "provided.al2023", "Handler": "bootstrap", "Architectures": ["x86_64"]}
    for key, value in want.items():
        if p.get(key) != value:
            raise Failure(f"{fn_name} {key} is {p.get(key)!r}, not {value!r}")
    code = p.get("CodeUri", p.get("Code"))
    if code != "../dist/lambda.zip":
        raise Failure(f"{fn_name} code is {code!r}, not ../dist/lambda.zip (what ./scripts/package-lambda builds)")


def url_auth_parameter(tpl):
    url_name, url = the_one(tpl, "Function URL", "AWS::Lambda::Url")
    auth = url.get("Properties", {}).get("AuthType")
    return url_name, url, auth


@check("function-url")
def _(tpl, header):
    fn_name, _ = function_of(tpl)
    url_name, url, auth = url_auth_parameter(tpl)
    p = url.get("Properties", {})
    if p.get("InvokeMode") != "RESPONSE_STREAM":
        raise Failure(f"{url_name} InvokeMode is {p.get('InvokeMode')!r}: streamed answers need RESPONSE_STREAM")
    if not (is_ref(p.get("TargetFunctionArn"), fn_name) or is_getatt(p.get("TargetFunctionArn"), fn_name, "Arn")):
        raise Failure(f"{url_name} does not target {fn_name}")
    if parameter_default(tpl, auth) != "AWS_IAM":
        raise Failure(f"{url_name} AuthType defaults to {parameter_default(tpl, auth)!r}: public must be an explicit choice")
    public = {}
    for name, perm in resources_of(tpl, "AWS::Lambda::Permission").items():
        pp = perm.get("Properties", {})
        if pp.get("Principal") != "*":
            continue
        cond = perm.get("Condition")
        if not (isinstance(auth, dict) and cond and condition_on(tpl, cond) == (auth.get("Ref"), "NONE")):
            raise Failure(f"{name} opens the function to everyone whatever AuthType is")
        public[pp.get("Action")] = pp
    if "Ref" in (auth or {}) and "NONE" in ((tpl.get("Parameters") or {}).get(auth["Ref"], {}).get("AllowedValues") or []):
        url_perm = public.get("lambda:InvokeFunctionUrl") or {}
        invoke_perm = public.get("lambda:InvokeFunction") or {}
        if url_perm.get("FunctionUrlAuthType") != "NONE" or invoke_perm.get("InvokedViaFunctionUrl") is not True:
            raise Failure("AuthType NONE needs both public permissions: lambda:InvokeFunctionUrl (FunctionUrlAuthType NONE) "
                          "and lambda:InvokeFunction (InvokedViaFunctionUrl true)")


@check("env-invoke-mode")
def _(tpl, header):
    # Lambda does not tell the function how its URL invokes it; a mismatch garbles every answer.
    url_name, url, _ = url_auth_parameter(tpl)
    mode = url.get("Properties", {}).get("InvokeMode", "BUFFERED")
    told = env_of(tpl).get("CHAT_FUNCTION_URL_INVOKE_MODE", "BUFFERED")
    if told != mode:
        raise Failure(f"CHAT_FUNCTION_URL_INVOKE_MODE is {told!r} but {url_name} InvokeMode is {mode!r}")


@check("env-known-variables")
def _(tpl, header):
    config = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "sample_server", "config.hpp")
    with open(config, encoding="utf-8") as f:
        known = set(re.findall(r'\{"(CHAT_[A-Z0-9_]+)"', f.read()))
    unknown = sorted(name for name in env_of(tpl) if name.startswith("CHAT_") and name not in known)
    if unknown:
        raise Failure(f"the function's environment sets {unknown}, which sample_server does not read")


@check("http-api")
def _(tpl, header):
    fn_name, _ = function_of(tpl)
    api_name, api = the_one(tpl, "HTTP API", "AWS::ApiGatewayV2::Api")
    if api.get("Properties", {}).get("ProtocolType") != "HTTP":
        raise Failure(f"{api_name} is not an HTTP API")
    integ_name, integ = the_one(tpl, "HTTP API integration", "AWS::ApiGatewayV2::Integration")
    ip = integ.get("Properties", {})
    if ip.get("IntegrationType") != "AWS_PROXY" or str(ip.get("PayloadFormatVersion")) != "2.0" \
            or not is_getatt(ip.get("IntegrationUri"), fn_name, "Arn"):
        raise Failure(f"{integ_name} is not an AWS_PROXY integration of {fn_name} with payload format 2.0")
    routes = resources_of(tpl, "AWS::ApiGatewayV2::Route")
    catch_all = [r for r in routes.values() if r.get("Properties", {}).get("RouteKey") in ("$default", "ANY /{proxy+}")]
    if not catch_all:
        raise Failure("no $default (or ANY /{proxy+}) route: some paths would not reach the function")
    _, _, auth = url_auth_parameter(tpl)
    for route in catch_all:
        rp = route.get("Properties", {})
        if rp.get("Target") != {"Fn::Sub": f"integrations/${{{integ_name}}}"}:
            raise Failure(f"the catch-all route does not target {integ_name}")
        if rp.get("AuthorizationType") != auth:
            raise Failure(f"the route's AuthorizationType {rp.get('AuthorizationType')!r} is not the Function URL's {auth!r}")
    if not any(s.get("Properties", {}).get("AutoDeploy") is True for s in resources_of(tpl, "AWS::ApiGatewayV2::Stage").values()):
        raise Failure("no auto-deployed stage: the API would serve nothing")
    allowed = [p for p in resources_of(tpl, "AWS::Lambda::Permission").values()
               if p.get("Properties", {}).get("Principal") == "apigateway.amazonaws.com"
               and f"${{{api_name}}}" in str(p.get("Properties", {}).get("SourceArn"))]
    if not allowed:
        raise Failure(f"no permission for {api_name} (and only it) to invoke the function")


@check("outputs")
def _(tpl, header):
    outputs = " ".join(str(o.get("Value")) for o in (tpl.get("Outputs") or {}).values())
    named = [(kind, the_one(tpl, kind, *types)[0]) for kind, types in (
        ("HTTP API", ("AWS::ApiGatewayV2::Api",)), ("Function URL", ("AWS::Lambda::Url",)),
        ("secret", ("AWS::SecretsManager::Secret",)))]
    (history_name, _), (keys_name, _), (usage_name, _), (limits_name, _), (conv_name, _) = database_tables(tpl)
    for kind, name in named + [("history table", history_name), ("keys table", keys_name), ("usage table", usage_name),
                               ("limits table", limits_name), ("conversations table", conv_name)]:
        if f"'{name}'" not in outputs and f"{{{name}." not in outputs and f"${{{name}}}" not in outputs:
            raise Failure(f"no output gives the {kind} ({name})")


DASHBOARD_PSEUDO = {"AWS::Region", "AWS::AccountId", "AWS::Partition", "AWS::StackName", "AWS::URLSuffix"}


def dashboard_metrics(tpl):
    """The metrics of the CloudWatch dashboard, as (namespace, metric, dimensions, stat), and its
    body's variables, read from its !Sub text: ${X} stands for "SUB:X", and "." in a metric's
    array for the item at the same place in the one before (CloudWatch's shorthand)."""
    name, dash = the_one(tpl, "CloudWatch dashboard", "AWS::CloudWatch::Dashboard")
    body = dash.get("Properties", {}).get("DashboardBody")
    if not isinstance(body, dict) or not isinstance(body.get("Fn::Sub"), str):
        raise Failure(f"{name}'s DashboardBody is not a !Sub of a JSON text")
    text = body["Fn::Sub"]
    try:
        parsed = json.loads(re.sub(r"\$\{([^}]+)\}", lambda m: "SUB:" + m.group(1), text))
    except ValueError as e:
        raise Failure(f"{name}'s DashboardBody is not JSON: {e}")
    metrics = set()
    for widget in parsed.get("widgets", []):
        props = widget.get("properties", {})
        if widget.get("type") != "metric":
            continue
        if props.get("region") != "SUB:AWS::Region":
            raise Failure(f"a widget of {name} ({props.get('title')!r}) reads region {props.get('region')!r}, not the stack's")
        before = []
        for m in props.get("metrics", []):
            options = m[-1] if m and isinstance(m[-1], dict) else {}
            items = [x for x in m if not isinstance(x, dict)]
            items = [before[i] if x == "." and i < len(before) else x for i, x in enumerate(items)]
            before = items
            metrics.add((items[0], items[1], tuple(items[2:]), options.get("stat", props.get("stat"))))
    return name, set(re.findall(r"\$\{([^}]+)\}", text)), metrics


@check("cloudwatch-dashboard")
def _(tpl, header):
    # The gateway design's dashboard: API requests, latency p50/p99, 4xx/5xx; the function's
    # concurrency, errors and duration; every table's capacity and throttles. Each metric must
    # name this stack's resources, or the page draws nothing and no one notices.
    name, variables, metrics = dashboard_metrics(tpl)
    unknown = sorted(v for v in variables if v not in (tpl.get("Resources") or {}) and v not in DASHBOARD_PSEUDO)
    if unknown:
        raise Failure(f"{name} names {unknown}, which are not resources of the template")
    fn_name, _ = function_of(tpl)
    api_name, _ = the_one(tpl, "HTTP API", "AWS::ApiGatewayV2::Api")
    api, fn = ("ApiId", f"SUB:{api_name}"), ("FunctionName", f"SUB:{fn_name}")
    wanted = [("AWS/ApiGateway", "Count", api, None), ("AWS/ApiGateway", "Latency", api, "p50"),
              ("AWS/ApiGateway", "Latency", api, "p99"), ("AWS/ApiGateway", "4xx", api, None),
              ("AWS/ApiGateway", "5xx", api, None), ("AWS/Lambda", "ConcurrentExecutions", fn, None),
              ("AWS/Lambda", "Errors", fn, None), ("AWS/Lambda", "Throttles", fn, None),
              ("AWS/Lambda", "Duration", fn, "p99")]
    for table, _ in database_tables(tpl):
        for metric in ("ConsumedReadCapacityUnits", "ConsumedWriteCapacityUnits", "ReadThrottleEvents", "WriteThrottleEvents"):
            wanted.append(("AWS/DynamoDB", metric, ("TableName", f"SUB:{table}"), None))
    missing = [w for w in wanted
               if not any(m[:3] == w[:3] and (w[3] is None or m[3] == w[3]) for m in metrics)]
    if missing:
        raise Failure(f"{name} does not show " + ", ".join(
            f"{ns} {metric}{' ' + stat if stat else ''} of {dims[1][4:]}" for ns, metric, dims, stat in missing))


def run_checks(tpl, header):
    failures = []
    for check_id, fn in CHECKS:
        try:
            fn(tpl, header)
        except Failure as e:
            failures.append((check_id, str(e)))
        except Exception as e:  # a mutated shape the check did not expect still fails it
            failures.append((check_id, f"{type(e).__name__}: {e}"))
    return failures


# --- self-test: each mutation must make its check fail ------------------------------------------

def res(tpl, name):
    return tpl["Resources"][name]


def stmt(tpl, sid):
    for s in res(tpl, "FunctionRole")["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]:
        for value, _ in branches(s):
            if value.get("Sid") == sid:
                return value
    raise KeyError(sid)


def env(tpl):
    return res(tpl, "ChatFunction")["Properties"]["Environment"]["Variables"]


def dashboard_edit(old, new):
    """A mutation of the dashboard's body text: `old` replaced by `new` (which must change it)."""
    def edit(t):
        body = res(t, "Dashboard")["Properties"]["DashboardBody"]
        assert old in body["Fn::Sub"], old
        body["Fn::Sub"] = body["Fn::Sub"].replace(old, new)
    return edit


MUTATIONS = [
    ("role-is-ours", "AWSLambdaBasicExecutionRole attached",
     lambda t: res(t, "FunctionRole")["Properties"].__setitem__(
         "ManagedPolicyArns", ["arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"])),
    ("role-is-ours", "SAM Policies on the function",
     lambda t: res(t, "ChatFunction")["Properties"].__setitem__("Policies", ["AWSLambdaBasicExecutionRole"])),
    ("role-is-ours", "function without our role",
     lambda t: res(t, "ChatFunction")["Properties"].pop("Role")),
    ("role-no-wildcard-action", "dynamodb:*",
     lambda t: stmt(t, "History").__setitem__("Action", ["dynamodb:*"])),
    ("role-no-wildcard-action", "NotAction",
     lambda t: stmt(t, "History").__setitem__("NotAction", "iam:*")),
    ("role-no-wildcard-resource", "Resource *",
     lambda t: stmt(t, "History").__setitem__("Resource", "*")),
    ("role-no-wildcard-resource", "table/* in a Sub",
     lambda t: stmt(t, "History").__setitem__("Resource", {"Fn::Sub": "arn:aws:dynamodb:${AWS::Region}:${AWS::AccountId}:table/*"})),
    ("role-no-wildcard-resource", "table/* in the list form of Sub",
     lambda t: stmt(t, "History").__setitem__("Resource", {"Fn::Sub": ["arn:aws:dynamodb:${R}:${A}:table/*", {"R": "x", "A": "y"}]})),
    ("role-no-wildcard-resource", "bedrock pattern made unconditional",
     lambda t: res(t, "FunctionRole")["Properties"]["Policies"][0]["PolicyDocument"]["Statement"].append(
         copy.deepcopy(stmt(t, "Bedrock")))),
    ("role-services", "iam:PassRole added",
     lambda t: stmt(t, "Logs")["Action"].append("iam:PassRole")),
    ("role-logs", "logs:CreateLogGroup added",
     lambda t: stmt(t, "Logs")["Action"].append("logs:CreateLogGroup")),
    ("role-logs", "logs on another group",
     lambda t: stmt(t, "Logs").__setitem__("Resource", {"Fn::Sub": "arn:aws:logs:${AWS::Region}:${AWS::AccountId}:log-group:other"})),
    ("role-dynamodb", "dynamodb:Scan added",
     lambda t: stmt(t, "History")["Action"].append("dynamodb:Scan")),
    ("role-dynamodb", "dynamodb:Query missing",
     lambda t: stmt(t, "History")["Action"].remove("dynamodb:Query")),
    ("role-dynamodb", "table index ARN",
     lambda t: stmt(t, "History").__setitem__("Resource", [{"Fn::GetAtt": ["HistoryTable", "Arn"]},
                                                           {"Fn::Sub": "${HistoryTable.Arn}/index/x"}])),
    ("role-secret", "secretsmanager:ListSecrets added",
     lambda t: stmt(t, "ProviderKey").__setitem__("Action", ["secretsmanager:GetSecretValue", "secretsmanager:ListSecrets"])),
    ("role-secret", "GetSecretValue on a name pattern",
     lambda t: stmt(t, "ProviderKey").__setitem__("Resource", {"Fn::Sub": "arn:aws:secretsmanager:${AWS::Region}:${AWS::AccountId}:secret:openai"})),
    ("env-database-url", "sqlite on /tmp",
     lambda t: env(t).__setitem__("CHAT_DATABASE_URL", "sqlite:/tmp/chat.db")),
    ("env-database-url", "another table",
     lambda t: env(t).__setitem__("CHAT_DATABASE_URL", {"Fn::Sub": "dynamodb://other-table?region=${AWS::Region}"})),
    ("env-secret-arn", "ARN of another secret",
     lambda t: env(t).__setitem__("CHAT_OPENAI_API_KEY_SECRET_ARN", "arn:aws:secretsmanager:us-east-1:123456789012:secret:x")),
    ("env-secret-arn", "the Anthropic key's secret named when Provider is gemini",
     lambda t: env(t).__setitem__("CHAT_ANTHROPIC_API_KEY_SECRET_ARN", {"Fn::If": ["UseGemini", {"Ref": "ApiKeySecret"}, {"Ref": "AWS::NoValue"}]})),
    ("env-secret-arn", "a secret that exists for openai alone",
     lambda t: res(t, "ApiKeySecret").__setitem__("Condition", "UseOpenAI")),
    ("env-secret-arn", "a key in the secret's template value",
     lambda t: res(t, "ApiKeySecret")["Properties"].__setitem__("SecretString", '{"api_key":"sk-proj-abcdefghijkl"}')),
    ("env-no-key", "OPENAI_API_KEY in the environment",
     lambda t: env(t).__setitem__("OPENAI_API_KEY", {"Ref": "Model"})),
    ("env-no-key", "a key-looking value",
     lambda t: env(t).__setitem__("CHAT_MODEL", "sk-proj-abcdefghijkl")),
    ("env-no-key", "a NoEcho parameter in the environment",
     lambda t: (t["Parameters"].__setitem__("OpenAIKey", {"Type": "String", "NoEcho": True, "Default": ""}),
                env(t).__setitem__("CHAT_OPENAI_HEADER", {"Fn::Sub": "Bearer ${OpenAIKey}"}))),
    ("env-upstream-deadline", "deadline as long as the function timeout",
     lambda t: t["Mappings"]["UpstreamLimits"]["60"].__setitem__("Deadline", "60")),
    ("env-upstream-deadline", "deadline fixed, not mapped from the timeout",
     lambda t: env(t).__setitem__("CHAT_UPSTREAM_DEADLINE", "120")),
    ("env-upstream-deadline", "a timeout with no mapping entry",
     lambda t: t["Parameters"]["FunctionTimeout"]["AllowedValues"].append(600)),
    ("env-log-format", "text logs",
     lambda t: env(t).__setitem__("CHAT_LOG_FORMAT", "text")),
    ("log-group", "no retention",
     lambda t: res(t, "LogGroup")["Properties"].pop("RetentionInDays")),
    ("log-group", "named after something else",
     lambda t: res(t, "LogGroup")["Properties"].__setitem__("LogGroupName", "/chatkit/logs")),
    ("log-group", "function not pointed at it",
     lambda t: res(t, "ChatFunction")["Properties"].pop("LoggingConfig")),
    ("role-dynamodb", "keys read whatever CHAT_AUTH is",
     lambda t: res(t, "FunctionRole")["Properties"]["Policies"][0]["PolicyDocument"]["Statement"].append(
         copy.deepcopy(stmt(t, "ApiKeys")))),
    ("role-dynamodb", "the function may write keys",
     lambda t: stmt(t, "ApiKeys").__setitem__("Action", ["dynamodb:Scan", "dynamodb:PutItem"])),
    ("role-dynamodb", "Scan missing on the keys table",
     lambda t: stmt(t, "ApiKeys").__setitem__("Action", ["dynamodb:GetItem"])),
    ("role-dynamodb", "keys table index ARN",
     lambda t: stmt(t, "ApiKeys").__setitem__("Resource", {"Fn::Sub": "${KeysTable.Arn}/index/x"})),
    ("env-database-url", "no keys_table in the URL",
     lambda t: env(t).__setitem__("CHAT_DATABASE_URL", {"Fn::Sub": "dynamodb://${HistoryTable}?region=${AWS::Region}"})),
    ("env-database-url", "keys_table naming the history table",
     lambda t: env(t).__setitem__("CHAT_DATABASE_URL",
                                  {"Fn::Sub": "dynamodb://${HistoryTable}?region=${AWS::Region}&keys_table=${HistoryTable}"})),
    ("role-dynamodb", "the function may delete usage records",
     lambda t: stmt(t, "Usage").__setitem__("Action", ["dynamodb:BatchWriteItem", "dynamodb:Query", "dynamodb:DeleteItem"])),
    ("role-dynamodb", "BatchWriteItem missing on the usage table",
     lambda t: stmt(t, "Usage").__setitem__("Action", ["dynamodb:Query"])),
    ("role-dynamodb", "Query on every index of the usage table",
     lambda t: stmt(t, "UsageByKey").__setitem__("Resource", {"Fn::Sub": "${UsageTable.Arn}/index/other"})),
    ("role-dynamodb", "writes on the usage index",
     lambda t: stmt(t, "UsageByKey").__setitem__("Action", ["dynamodb:Query", "dynamodb:BatchWriteItem"])),
    ("role-dynamodb", "no Query on the usage index",
     lambda t: res(t, "FunctionRole")["Properties"]["Policies"][0]["PolicyDocument"]["Statement"].remove(stmt(t, "UsageByKey"))),
    ("env-database-url", "no usage_table in the URL",
     lambda t: env(t).__setitem__("CHAT_DATABASE_URL",
                                  {"Fn::Sub": "dynamodb://${HistoryTable}?region=${AWS::Region}&keys_table=${KeysTable}"})),
    ("env-database-url", "usage_table naming the keys table",
     lambda t: env(t).__setitem__("CHAT_DATABASE_URL",
                                  {"Fn::Sub": "dynamodb://${HistoryTable}?region=${AWS::Region}&keys_table=${KeysTable}&usage_table=${KeysTable}"})),
    ("usage-table-design", "TTL off",
     lambda t: res(t, "UsageTable")["Properties"]["TimeToLiveSpecification"].__setitem__("Enabled", False)),
    ("usage-table-design", "TTL on another attribute",
     lambda t: res(t, "UsageTable")["Properties"]["TimeToLiveSpecification"].__setitem__("AttributeName", "ttl")),
    ("usage-table-design", "no index",
     lambda t: res(t, "UsageTable")["Properties"].pop("GlobalSecondaryIndexes")),
    ("usage-table-design", "index renamed",
     lambda t: res(t, "UsageTable")["Properties"]["GlobalSecondaryIndexes"][0].__setitem__("IndexName", "by-key")),
    ("usage-table-design", "index without cost_usd",
     lambda t: res(t, "UsageTable")["Properties"]["GlobalSecondaryIndexes"][0].__setitem__("Projection", {"ProjectionType": "KEYS_ONLY"})),
    ("usage-table-design", "sort key renamed",
     lambda t: res(t, "UsageTable")["Properties"]["KeySchema"][1].__setitem__("AttributeName", "time")),
    ("usage-table-design", "no PITR",
     lambda t: res(t, "UsageTable")["Properties"].pop("PointInTimeRecoverySpecification")),
    ("usage-table-design", "deleted with the stack",
     lambda t: res(t, "UsageTable").pop("DeletionPolicy")),
    ("usage-table-design", "provisioned billing",
     lambda t: res(t, "UsageTable")["Properties"].__setitem__("BillingMode", "PROVISIONED")),
    ("outputs", "no usage table output",
     lambda t: t["Outputs"].pop("UsageTableName")),
    ("role-dynamodb", "limits counted with the rate limit off and no keys",
     lambda t: t["Conditions"].__setitem__("CountsLimits", {"Condition": "UseApiKeys"}) if "CountsLimits" in t["Conditions"] else None),
    ("role-dynamodb", "limits counted whatever CHAT_AUTH is",
     lambda t: res(t, "FunctionRole")["Properties"]["Policies"][0]["PolicyDocument"]["Statement"].append(
         copy.deepcopy(stmt(t, "Limits")))),
    ("role-dynamodb", "the function may delete counters",
     lambda t: stmt(t, "Limits")["Action"].append("dynamodb:DeleteItem")),
    ("role-dynamodb", "GetItem missing on the limits table",
     lambda t: stmt(t, "Limits").__setitem__("Action", ["dynamodb:UpdateItem"])),
    ("role-dynamodb", "UpdateItem missing on the limits table",
     lambda t: stmt(t, "Limits").__setitem__("Action", ["dynamodb:GetItem"])),
    ("role-dynamodb", "the limits grant on the usage table",
     lambda t: stmt(t, "Limits").__setitem__("Resource", {"Fn::GetAtt": ["UsageTable", "Arn"]})),
    ("role-dynamodb", "limits table index ARN",
     lambda t: stmt(t, "Limits").__setitem__("Resource", {"Fn::Sub": "${LimitsTable.Arn}/index/x"})),
    ("env-database-url", "no limits_table in the URL",
     lambda t: env(t).__setitem__("CHAT_DATABASE_URL",
                                  {"Fn::Sub": "dynamodb://${HistoryTable}?region=${AWS::Region}&keys_table=${KeysTable}&usage_table=${UsageTable}"})),
    ("env-database-url", "limits_table naming the usage table",
     lambda t: env(t).__setitem__("CHAT_DATABASE_URL",
                                  {"Fn::Sub": "dynamodb://${HistoryTable}?region=${AWS::Region}&keys_table=${KeysTable}"
                                              "&usage_table=${UsageTable}&limits_table=${UsageTable}"})),
    ("env-database-url", "a sixth table the URL does not name",
     lambda t: t["Resources"].__setitem__("OtherTable", copy.deepcopy(res(t, "LimitsTable")))),
    ("limits-table-design", "TTL off",
     lambda t: res(t, "LimitsTable")["Properties"]["TimeToLiveSpecification"].__setitem__("Enabled", False)),
    ("limits-table-design", "TTL on another attribute",
     lambda t: res(t, "LimitsTable")["Properties"]["TimeToLiveSpecification"].__setitem__("AttributeName", "ttl")),
    ("limits-table-design", "no TTL",
     lambda t: res(t, "LimitsTable")["Properties"].pop("TimeToLiveSpecification")),
    ("limits-table-design", "partition key renamed",
     lambda t: (res(t, "LimitsTable")["Properties"]["KeySchema"][0].__setitem__("AttributeName", "pk"),
                res(t, "LimitsTable")["Properties"]["AttributeDefinitions"][0].__setitem__("AttributeName", "pk"))),
    ("limits-table-design", "a numeric partition key",
     lambda t: res(t, "LimitsTable")["Properties"]["AttributeDefinitions"][0].__setitem__("AttributeType", "N")),
    ("limits-table-design", "a sort key",
     lambda t: (res(t, "LimitsTable")["Properties"]["KeySchema"].append({"AttributeName": "window", "KeyType": "RANGE"}),
                res(t, "LimitsTable")["Properties"]["AttributeDefinitions"].append({"AttributeName": "window", "AttributeType": "N"}))),
    ("limits-table-design", "an index",
     lambda t: res(t, "LimitsTable")["Properties"].__setitem__("GlobalSecondaryIndexes", [
         {"IndexName": "by-n", "KeySchema": [{"AttributeName": "counter", "KeyType": "HASH"}],
          "Projection": {"ProjectionType": "KEYS_ONLY"}}])),
    ("limits-table-design", "not encrypted",
     lambda t: res(t, "LimitsTable")["Properties"].pop("SSESpecification")),
    ("limits-table-design", "provisioned billing",
     lambda t: res(t, "LimitsTable")["Properties"].__setitem__("BillingMode", "PROVISIONED")),
    ("outputs", "no limits table output",
     lambda t: t["Outputs"].pop("LimitsTableName")),
    ("role-dynamodb", "the function may Scan conversations",
     lambda t: stmt(t, "Conversations")["Action"].append("dynamodb:Scan")),
    ("role-dynamodb", "ConditionCheckItem missing (a feedback's transaction would be refused)",
     lambda t: stmt(t, "Conversations")["Action"].remove("dynamodb:ConditionCheckItem")),
    ("role-dynamodb", "DeleteItem missing on the conversations table",
     lambda t: stmt(t, "Conversations")["Action"].remove("dynamodb:DeleteItem")),
    ("role-dynamodb", "BatchWriteItem missing on the conversations table",
     lambda t: stmt(t, "Conversations")["Action"].remove("dynamodb:BatchWriteItem")),
    ("role-dynamodb", "dynamodb:TransactWriteItems, which IAM does not know, granted",
     lambda t: stmt(t, "Conversations")["Action"].append("dynamodb:TransactWriteItems")),
    ("role-dynamodb", "conversations granted only with CHAT_AUTH=keys",
     lambda t: res(t, "FunctionRole")["Properties"]["Policies"][0]["PolicyDocument"]["Statement"].__setitem__(
         1, {"Fn::If": ["UseApiKeys", copy.deepcopy(stmt(t, "Conversations")), {"Ref": "AWS::NoValue"}]})),
    ("role-dynamodb", "the conversations grant on the history table",
     lambda t: stmt(t, "Conversations").__setitem__("Resource", {"Fn::GetAtt": ["HistoryTable", "Arn"]})),
    ("role-dynamodb", "Query on every index of the conversations table",
     lambda t: stmt(t, "ConversationsByUser").__setitem__("Resource", {"Fn::Sub": "${ConversationsTable.Arn}/index/*"})),
    ("role-dynamodb", "Query on another index of the conversations table",
     lambda t: stmt(t, "ConversationsByUser").__setitem__("Resource", {"Fn::Sub": "${ConversationsTable.Arn}/index/gsi2"})),
    ("role-dynamodb", "writes on the conversations index",
     lambda t: stmt(t, "ConversationsByUser").__setitem__("Action", ["dynamodb:Query", "dynamodb:PutItem"])),
    ("role-dynamodb", "no Query on the conversations index",
     lambda t: res(t, "FunctionRole")["Properties"]["Policies"][0]["PolicyDocument"]["Statement"].remove(
         stmt(t, "ConversationsByUser"))),
    ("env-database-url", "no conversations_table in the URL",
     lambda t: env(t).__setitem__("CHAT_DATABASE_URL",
                                  {"Fn::Sub": "dynamodb://${HistoryTable}?region=${AWS::Region}&keys_table=${KeysTable}"
                                              "&usage_table=${UsageTable}&limits_table=${LimitsTable}"})),
    ("env-database-url", "conversations_table naming the history table",
     lambda t: env(t).__setitem__("CHAT_DATABASE_URL",
                                  {"Fn::Sub": "dynamodb://${HistoryTable}?region=${AWS::Region}&keys_table=${KeysTable}"
                                              "&usage_table=${UsageTable}&limits_table=${LimitsTable}"
                                              "&conversations_table=${HistoryTable}"})),
    ("conversations-table-design", "sort key renamed",
     lambda t: (res(t, "ConversationsTable")["Properties"]["KeySchema"][1].__setitem__("AttributeName", "sort"),
                res(t, "ConversationsTable")["Properties"]["AttributeDefinitions"][1].__setitem__("AttributeName", "sort"))),
    ("conversations-table-design", "no sort key",
     lambda t: (res(t, "ConversationsTable")["Properties"]["KeySchema"].pop(1),
                res(t, "ConversationsTable")["Properties"]["AttributeDefinitions"].pop(1))),
    ("conversations-table-design", "a numeric partition key",
     lambda t: res(t, "ConversationsTable")["Properties"]["AttributeDefinitions"][0].__setitem__("AttributeType", "N")),
    ("conversations-table-design", "no index",
     lambda t: res(t, "ConversationsTable")["Properties"].pop("GlobalSecondaryIndexes")),
    ("conversations-table-design", "index renamed",
     lambda t: res(t, "ConversationsTable")["Properties"]["GlobalSecondaryIndexes"][0].__setitem__("IndexName", "by-user")),
    ("conversations-table-design", "index keys swapped",
     lambda t: res(t, "ConversationsTable")["Properties"]["GlobalSecondaryIndexes"][0].__setitem__("KeySchema", [
         {"AttributeName": "gsi1sk", "KeyType": "HASH"}, {"AttributeName": "gsi1pk", "KeyType": "RANGE"}])),
    ("conversations-table-design", "index projecting keys only",
     lambda t: res(t, "ConversationsTable")["Properties"]["GlobalSecondaryIndexes"][0].__setitem__(
         "Projection", {"ProjectionType": "KEYS_ONLY"})),
    ("conversations-table-design", "a second index",
     lambda t: res(t, "ConversationsTable")["Properties"]["GlobalSecondaryIndexes"].append(
         {"IndexName": "gsi2", "KeySchema": [{"AttributeName": "sk", "KeyType": "HASH"}], "Projection": {"ProjectionType": "ALL"}})),
    ("conversations-table-design", "a TTL",
     lambda t: res(t, "ConversationsTable")["Properties"].__setitem__("TimeToLiveSpecification",
                                                                      {"AttributeName": "expires_at", "Enabled": True})),
    ("conversations-table-design", "no PITR",
     lambda t: res(t, "ConversationsTable")["Properties"].pop("PointInTimeRecoverySpecification")),
    ("conversations-table-design", "not encrypted",
     lambda t: res(t, "ConversationsTable")["Properties"].pop("SSESpecification")),
    ("conversations-table-design", "provisioned billing",
     lambda t: res(t, "ConversationsTable")["Properties"].__setitem__("BillingMode", "PROVISIONED")),
    ("conversations-table-design", "deleted with the stack",
     lambda t: res(t, "ConversationsTable").pop("DeletionPolicy")),
    ("conversations-table-design", "deleted when replaced",
     lambda t: res(t, "ConversationsTable").__setitem__("UpdateReplacePolicy", "Delete")),
    ("outputs", "no conversations table output",
     lambda t: t["Outputs"].pop("ConversationsTableName")),
    ("env-auth", "CHAT_AUTH fixed, not a parameter",
     lambda t: env(t).__setitem__("CHAT_AUTH", "keys")),
    ("keys-table-design", "a sort key",
     lambda t: (res(t, "KeysTable")["Properties"]["KeySchema"].append({"AttributeName": "sk", "KeyType": "RANGE"}),
                res(t, "KeysTable")["Properties"]["AttributeDefinitions"].append({"AttributeName": "sk", "AttributeType": "S"}))),
    ("keys-table-design", "a TTL on the keys",
     lambda t: res(t, "KeysTable")["Properties"].__setitem__("TimeToLiveSpecification",
                                                             {"AttributeName": "expires_at", "Enabled": True})),
    ("keys-table-design", "deleted with the stack",
     lambda t: res(t, "KeysTable").pop("DeletionPolicy")),
    ("keys-table-design", "provisioned billing",
     lambda t: res(t, "KeysTable")["Properties"].__setitem__("BillingMode", "PROVISIONED")),
    ("keys-table-design", "no PITR",
     lambda t: res(t, "KeysTable")["Properties"].pop("PointInTimeRecoverySpecification")),
    ("outputs", "no keys table output",
     lambda t: t["Outputs"].pop("KeysTableName")),
    ("table-design", "TTL off",
     lambda t: res(t, "HistoryTable")["Properties"]["TimeToLiveSpecification"].__setitem__("Enabled", False)),
    ("table-design", "no PITR",
     lambda t: res(t, "HistoryTable")["Properties"].pop("PointInTimeRecoverySpecification")),
    ("table-design", "sort key renamed",
     lambda t: res(t, "HistoryTable")["Properties"]["KeySchema"][1].__setitem__("AttributeName", "sk")),
    ("table-design", "deleted with the stack",
     lambda t: res(t, "HistoryTable").pop("DeletionPolicy")),
    ("table-design", "provisioned billing",
     lambda t: res(t, "HistoryTable")["Properties"].__setitem__("BillingMode", "PROVISIONED")),
    ("function-runtime", "arm64",
     lambda t: res(t, "ChatFunction")["Properties"].__setitem__("Architectures", ["arm64"])),
    ("function-runtime", "another zip",
     lambda t: res(t, "ChatFunction")["Properties"].__setitem__("CodeUri", "../build/lambda.zip")),
    ("function-url", "buffered Function URL",
     lambda t: res(t, "FunctionUrl")["Properties"].__setitem__("InvokeMode", "BUFFERED")),
    ("function-url", "public by default",
     lambda t: t["Parameters"]["AuthType"].__setitem__("Default", "NONE")),
    ("function-url", "public permission without the condition",
     lambda t: res(t, "FunctionUrlPublicPermission").pop("Condition")),
    ("function-url", "second public permission missing",
     lambda t: t["Resources"].pop("FunctionUrlPublicInvokePermission")),
    ("env-invoke-mode", "invoke mode not told to the function",
     lambda t: env(t).pop("CHAT_FUNCTION_URL_INVOKE_MODE")),
    ("env-known-variables", "a misspelt variable",
     lambda t: env(t).__setitem__("CHAT_SECRETS_REFRESH", "60")),
    ("cloudwatch-dashboard", "no dashboard",
     lambda t: t["Resources"].pop("Dashboard")),
    ("cloudwatch-dashboard", "latency without p99",
     dashboard_edit('"Latency", "ApiId", "${HttpApi}", {"stat": "p99"', '"Latency", "ApiId", "${HttpApi}", {"stat": "p90"')),
    ("cloudwatch-dashboard", "the usage table not watched",
     dashboard_edit("${UsageTable}", "${KeysTable}")),
    ("cloudwatch-dashboard", "the conversations table not watched",
     dashboard_edit("${ConversationsTable}", "${HistoryTable}")),
    ("cloudwatch-dashboard", "the conversations table's throttled writes not watched",
     dashboard_edit('"WriteThrottleEvents", "TableName", "${ConversationsTable}"', '"WriteThrottleEvents", "TableName", "${HistoryTable}"')),
    ("cloudwatch-dashboard", "no 5xx",
     dashboard_edit('"5xx", "ApiId"', '"Count", "ApiId"')),
    ("cloudwatch-dashboard", "a widget in a fixed region",
     dashboard_edit('"title": "API requests", "region": "${AWS::Region}"', '"title": "API requests", "region": "us-east-1"')),
    ("cloudwatch-dashboard", "a function that does not exist",
     dashboard_edit("${ChatFunction}", "${Function}")),
    ("cloudwatch-dashboard", "not JSON",
     dashboard_edit('"widgets": [', '"widgets": [,')),
    ("http-api", "payload format 1.0",
     lambda t: res(t, "HttpApiIntegration")["Properties"].__setitem__("PayloadFormatVersion", "1.0")),
    ("http-api", "only GET /health routed",
     lambda t: res(t, "HttpApiRoute")["Properties"].__setitem__("RouteKey", "GET /health")),
    ("http-api", "HTTP API open while the Function URL is not",
     lambda t: res(t, "HttpApiRoute")["Properties"].__setitem__("AuthorizationType", "NONE")),
    ("env-upstream-deadline", "integration timeout above 30 s",
     lambda t: res(t, "HttpApiIntegration")["Properties"].__setitem__("TimeoutInMillis", 60000)),
    ("outputs", "no Function URL output",
     lambda t: t["Outputs"].pop("FunctionUrl")),
]


def self_test(tpl, header):
    failures = run_checks(tpl, header)
    if failures:
        print("the template itself fails, so mutations prove nothing:")
        for check_id, why in failures:
            print(f"  [{check_id}] {why}")
        return 1
    covered, bad = set(), 0
    for check_id, what, mutate in MUTATIONS:
        mutated = copy.deepcopy(tpl)
        mutate(mutated)
        caught = [why for cid, why in run_checks(mutated, header) if cid == check_id]
        covered.add(check_id)
        if caught:
            print(f"ok   [{check_id}] {what}: {caught[0]}")
        else:
            bad += 1
            print(f"MISS [{check_id}] {what}: the check still passes")
    for check_id, _ in CHECKS:
        if check_id not in covered:
            bad += 1
            print(f"MISS [{check_id}] has no mutation that makes it fail")
    # The headers are inputs too: a store that starts calling Scan, a key directory whose keys()
    # starts calling GetItem, a counter store that stops reading, or a renamed attribute, must fail
    # the checks that read them.
    for check_id, what, which, edit in (
            ("role-dynamodb", "the store also calls Scan", "store",
             lambda h: h + '\nvoid more() { client_.call("Scan", {}); }\n'),
            ("table-design", "the store renames expires_at", "store",
             lambda h: h.replace('"expires_at"', '"expiry"')),
            ("role-dynamodb", "keys() also calls GetItem", "keys",
             lambda h: h.replace("result<std::vector<key_record>> keys() {\n",
                                 'result<std::vector<key_record>> keys() {\n        client_.call("GetItem", {});\n')),
            ("keys-table-design", "the key directory renames pk", "keys",
             lambda h: h.replace('"pk"', '"key_id"')),
            ("role-dynamodb", "the usage store also calls UpdateItem", "usage",
             lambda h: h + '\nvoid more() { client_.call("UpdateItem", {}); }\n'),
            ("role-dynamodb", "the usage store queries another index", "usage",
             lambda h: h.replace('key_index = "key_id-sk"', 'key_index = "key_id-time"')),
            ("usage-table-design", "the usage store renames expires_at", "usage",
             lambda h: h.replace('"expires_at"', '"expiry"')),
            ("role-dynamodb", "the counter store also calls TransactWriteItems", "limits",
             lambda h: h + '\nvoid more() { client_.call("TransactWriteItems", {}); }\n'),
            ("role-dynamodb", "the counter store no longer reads counters", "limits",
             lambda h: h.replace('client_.call("GetItem"', 'client_.call("UpdateItem"')),
            ("limits-table-design", "the counter store renames expires_at", "limits",
             lambda h: h.replace("SET expires_at = :expires", "SET expiry = :expires")),
            ("limits-table-design", "the counter store renames its key", "limits",
             lambda h: h.replace('"counter"', '"name"')),
            ("role-dynamodb", "the conversations also call Scan", "store",
             lambda h: h + '\nvoid more() { conversations_call("Scan", {}); }\n'),
            ("role-dynamodb", "the conversations stop calling BatchWriteItem", "store",
             lambda h: h.replace('conversations_call("BatchWriteItem"', 'conversations_call("DeleteItem"')),
            ("role-dynamodb", "no ConditionCheck in any transaction", "store",
             lambda h: h.replace('["ConditionCheck"] =', '["Put"] =')),
            ("role-dynamodb", "the conversations query another index", "store",
             lambda h: h.replace('conversations_index = "gsi1"', 'conversations_index = "by-user"')),
            ("role-dynamodb", "the conversations no longer query an index", "store",
             lambda h: re.sub(r'\{"IndexName", conversations_index\},\s*(\{"KeyConditionExpression")', r"\1", h)),
            ("conversations-table-design", "the store renames gsi1sk", "store",
             lambda h: h.replace('"gsi1sk"', '"gsi1_sort"')),
            ("conversations-table-design", "the store's index projects keys only", "store",
             lambda h: h.replace('{"ProjectionType", "ALL"}', '{"ProjectionType", "KEYS_ONLY"}')),
            ("conversations-table-design", "the store's partition key is a number", "store",
             lambda h: h.replace('{{"AttributeName", "pk"}, {"AttributeType", "S"}}', '{{"AttributeName", "pk"}, {"AttributeType", "N"}}'))):
        with open(getattr(header, which), encoding="utf-8") as f:
            text = f.read()
        with tempfile.NamedTemporaryFile("w", suffix=".hpp", delete=False) as f:
            f.write(edit(text))
        try:
            caught = [why for cid, why in run_checks(tpl, header._replace(**{which: f.name})) if cid == check_id]
        finally:
            os.unlink(f.name)
        if caught:
            print(f"ok   [{check_id}] {what}: {caught[0]}")
        else:
            bad += 1
            print(f"MISS [{check_id}] {what}: the check still passes")
    print(f"{len(MUTATIONS)} mutations, {len(CHECKS)} checks, {bad} missed")
    return 1 if bad else 0


def plain_cloudformation(tpl):
    """The template without the SAM transform: the one AWS::Serverless::Function becomes an
    AWS::Lambda::Function whose code is a placeholder S3 object. Every other property used here
    is the same in both."""
    tpl = copy.deepcopy(tpl)
    tpl.pop("Transform", None)
    for r in (tpl.get("Resources") or {}).values():
        if r.get("Type") == "AWS::Serverless::Function":
            r["Type"] = "AWS::Lambda::Function"
            r["Properties"].pop("CodeUri", None)
            r["Properties"]["Code"] = {"S3Bucket": "placeholder-bucket", "S3Key": "lambda.zip"}
        elif str(r.get("Type")).startswith("AWS::Serverless::"):
            raise SystemExit(f"--plain handles only AWS::Serverless::Function, not {r['Type']}")
    return tpl


def main(argv):
    if len(argv) == 4 and argv[1] == "--plain":
        with open(argv[3], "w", encoding="utf-8") as f:
            json.dump(plain_cloudformation(load(argv[2])), f, indent=1)
        return 0
    args = [a for a in argv[1:] if a != "--self-test"]
    if len(args) != 5:
        print(__doc__, file=sys.stderr)
        return 2
    tpl = load(args[0])
    header = Headers(store=args[1], keys=args[2], usage=args[3], limits=args[4])
    if "--self-test" in argv:
        return self_test(tpl, header)
    failures = run_checks(tpl, header)
    for check_id, why in failures:
        print(f"FAIL [{check_id}] {why}")
    if not failures:
        print(f"{len(CHECKS)} checks passed: {', '.join(c for c, _ in CHECKS)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
