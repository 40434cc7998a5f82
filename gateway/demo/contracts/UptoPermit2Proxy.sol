// SPDX-License-Identifier: Apache-2.0
// Written for this repository from the interface the x402 Python SDK calls at
// X402_UPTO_PERMIT2_PROXY_ADDRESS (`settle`, `settleWithPermit` with the settled `amount`):
// a local stand-in for x402UptoPermit2Proxy, NOT the audited upstream contract. The payer
// signs a maximum; only the facilitator named in the signed witness may settle, any amount
// up to that maximum, to the witness's recipient. Test and demo only.
pragma solidity 0.8.37;

import {ISignatureTransfer} from "@uniswap/v4-periphery/lib/permit2/src/interfaces/ISignatureTransfer.sol";
import {Permit2Witness} from "./Permit2Witness.sol";

contract UptoPermit2Proxy is Permit2Witness {
    struct Witness {
        address to;
        address facilitator;
        uint256 validAfter;
    }

    string public constant WITNESS_TYPE_STRING =
        "Witness witness)TokenPermissions(address token,uint256 amount)Witness(address to,address facilitator,uint256 validAfter)";
    bytes32 public constant WITNESS_TYPEHASH =
        keccak256("Witness(address to,address facilitator,uint256 validAfter)");

    error AmountExceedsPermitted();
    error UnauthorizedFacilitator();

    event Settled(address indexed owner, address indexed to, address indexed token, uint256 amount);

    function settle(
        ISignatureTransfer.PermitTransferFrom calldata permit,
        uint256 amount,
        address owner,
        Witness calldata witness,
        bytes calldata signature
    ) external {
        _settle(permit, amount, owner, witness, signature);
    }

    function settleWithPermit(
        EIP2612Permit calldata permit2612,
        ISignatureTransfer.PermitTransferFrom calldata permit,
        uint256 amount,
        address owner,
        Witness calldata witness,
        bytes calldata signature
    ) external {
        _applyEip2612Permit(permit2612, permit.permitted.token, owner, amount);
        _settle(permit, amount, owner, witness, signature);
    }

    function _settle(
        ISignatureTransfer.PermitTransferFrom calldata permit,
        uint256 amount,
        address owner,
        Witness calldata witness,
        bytes calldata signature
    ) private {
        if (msg.sender != witness.facilitator) revert UnauthorizedFacilitator();
        if (amount > permit.permitted.amount) revert AmountExceedsPermitted();
        _checkParties(owner, witness.to, witness.validAfter);
        PERMIT2.permitWitnessTransferFrom(
            permit,
            ISignatureTransfer.SignatureTransferDetails({to: witness.to, requestedAmount: amount}),
            owner,
            keccak256(abi.encode(WITNESS_TYPEHASH, witness.to, witness.facilitator, witness.validAfter)),
            WITNESS_TYPE_STRING,
            signature
        );
        emit Settled(owner, witness.to, permit.permitted.token, amount);
    }
}
