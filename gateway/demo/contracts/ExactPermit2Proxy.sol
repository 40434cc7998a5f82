// SPDX-License-Identifier: Apache-2.0
// Written for this repository from the interface the x402 Python SDK calls at
// X402_EXACT_PERMIT2_PROXY_ADDRESS (`settle`, `settleWithPermit`): a local stand-in for
// x402ExactPermit2Proxy, NOT the audited upstream contract. It is the Permit2 spender of an
// `exact` payment and can only move the permitted amount to the address in the signed witness.
// Test and demo only.
pragma solidity 0.8.37;

import {ISignatureTransfer} from "@uniswap/v4-periphery/lib/permit2/src/interfaces/ISignatureTransfer.sol";
import {Permit2Witness} from "./Permit2Witness.sol";

contract ExactPermit2Proxy is Permit2Witness {
    struct Witness {
        address to;
        uint256 validAfter;
    }

    string public constant WITNESS_TYPE_STRING =
        "Witness witness)TokenPermissions(address token,uint256 amount)Witness(address to,uint256 validAfter)";
    bytes32 public constant WITNESS_TYPEHASH = keccak256("Witness(address to,uint256 validAfter)");

    event Settled(address indexed owner, address indexed to, address indexed token, uint256 amount);

    function settle(
        ISignatureTransfer.PermitTransferFrom calldata permit,
        address owner,
        Witness calldata witness,
        bytes calldata signature
    ) external {
        _settle(permit, owner, witness, signature);
    }

    /// The EIP-2612 gas-sponsoring path: the token's permit gives Permit2 its allowance in the
    /// same transaction (a permit already used, e.g. front-run, is tolerated: Permit2 then
    /// fails on its own if the allowance is missing).
    function settleWithPermit(
        EIP2612Permit calldata permit2612,
        ISignatureTransfer.PermitTransferFrom calldata permit,
        address owner,
        Witness calldata witness,
        bytes calldata signature
    ) external {
        _applyEip2612Permit(permit2612, permit.permitted.token, owner, permit.permitted.amount);
        _settle(permit, owner, witness, signature);
    }

    function _settle(
        ISignatureTransfer.PermitTransferFrom calldata permit,
        address owner,
        Witness calldata witness,
        bytes calldata signature
    ) private {
        _checkParties(owner, witness.to, witness.validAfter);
        PERMIT2.permitWitnessTransferFrom(
            permit,
            ISignatureTransfer.SignatureTransferDetails({to: witness.to, requestedAmount: permit.permitted.amount}),
            owner,
            keccak256(abi.encode(WITNESS_TYPEHASH, witness.to, witness.validAfter)),
            WITNESS_TYPE_STRING,
            signature
        );
        emit Settled(owner, witness.to, permit.permitted.token, permit.permitted.amount);
    }
}
