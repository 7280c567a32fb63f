"""The sssrd fleet as an AWS CDK app: CloudFront → ALB → Auto Scaling group → render Lambda.

`stack.SssrdStack` wires the constructs: `network` (VPC and every security group rule),
`render` (the Lambda, its alias and async settings), `edge` (ALB, origin secret, CloudFront)
and `fleet` (instance role, launch template, user data, Auto Scaling group, scaling).
`parameters` validates the CDK context; `timings` derives every timeout from sssrd's settings.
"""
