#!/usr/bin/env python3
"""Translate the SAM template to plain CloudFormation, offline.

cfn-lint and `sam validate --lint` look at the SAM resources as written; the
resources SAM generates from them (roles, permissions, event source mappings,
the API stage and deployment) are only checked once the transform has run.
This runs aws-sam-translator locally: no AWS call, no credentials.

Usage: translate.py TEMPLATE OUTPUT [--region REGION]
"""

import argparse
import json
import logging
import os
import re
import sys

from samtranslator.model.exceptions import InvalidDocumentException
from samtranslator.translator.transform import transform
from samtranslator.yaml_helper import yaml_parse

DUMMY_CODE = "s3://infra-check-dummy-bucket/code.zip"


class OfflinePolicyLoader:
    """SAM asks IAM for the ARNs of managed policies named in `Policies`; offline
    there is no IAM, and the template only uses inline statements anyway."""

    def load(self):
        return {}


def replace_local_code(template):
    """`sam build`/`sam package` turn local CodeUri/ContentUri into s3:// URIs;
    the translator only accepts the latter, so stand a dummy one in."""
    globals_fn = template.get("Globals", {}).get("Function", {})
    if "CodeUri" in globals_fn:
        globals_fn["CodeUri"] = DUMMY_CODE
    for resource in template.get("Resources", {}).values():
        props = resource.get("Properties") or {}
        kind = resource.get("Type")
        if kind == "AWS::Serverless::Function" and "InlineCode" not in props:
            props["CodeUri"] = DUMMY_CODE
        elif kind == "AWS::Serverless::LayerVersion":
            props["ContentUri"] = DUMMY_CODE
        elif kind in ("AWS::Serverless::Api", "AWS::Serverless::HttpApi", "AWS::Serverless::StateMachine"):
            for key in ("DefinitionUri",):
                if isinstance(props.get(key), str):
                    props[key] = DUMMY_CODE


def check_dashboards(template):
    """DashboardBody is a JSON string inside !Sub, so no linter parses it: fill
    every ${...} with a number and make sure the result is JSON."""
    problems = []
    for name, resource in template.get("Resources", {}).items():
        if resource.get("Type") != "AWS::CloudWatch::Dashboard":
            continue
        body = resource.get("Properties", {}).get("DashboardBody")
        if isinstance(body, dict) and "Fn::Sub" in body:
            body = body["Fn::Sub"]
            body = body[0] if isinstance(body, list) else body
        if not isinstance(body, str):
            continue
        try:
            json.loads(re.sub(r"\$\{[^}]+\}", "0", body))
        except ValueError as error:
            problems.append(f"{name}: DashboardBody is not valid JSON: {error}")
    return problems


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("template")
    parser.add_argument("output")
    parser.add_argument("--region", default="us-east-1")
    args = parser.parse_args()

    # The translator warns about feature toggles it cannot fetch offline.
    logging.getLogger("samtranslator").setLevel(logging.ERROR)
    # The translator reads the region (and partition) from the environment.
    os.environ["AWS_DEFAULT_REGION"] = args.region
    os.environ.setdefault("AWS_REGION", args.region)

    with open(args.template, encoding="utf-8") as handle:
        template = yaml_parse(handle.read())
    replace_local_code(template)

    try:
        output = transform(template, {}, OfflinePolicyLoader())
    except InvalidDocumentException as error:
        for cause in error.causes:
            print(f"translate: {cause.message}", file=sys.stderr)
        return 1

    problems = check_dashboards(output)
    for problem in problems:
        print(f"translate: {problem}", file=sys.stderr)

    with open(args.output, "w", encoding="utf-8") as handle:
        json.dump(output, handle, indent=2, sort_keys=False)
        handle.write("\n")
    resources = output.get("Resources", {})
    print(f"translate: {len(resources)} CloudFormation resources -> {args.output}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
